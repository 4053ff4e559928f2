"""The checks every corpus reader makes before an utterance enters a manifest.

Readers differ in where audio and transcripts live; what makes an utterance unusable does not:
no transcript line, an empty transcript, unreadable audio, no samples, the wrong sample rate,
more than one channel, a WAV cut short, a FLAC that does not decode, NaN samples. Each is
reported by id with its reason, never dropped silently. 8-bit, 24-bit and float samples are
accepted: every reader scales them to the same int16 range.
"""

from __future__ import annotations

from pathlib import Path

from paddle_asr.data.audio import verify_audio
from paddle_asr.data.manifest import Utterance
from paddle_asr.errors import AsrError


def usable_utterance(key: str, audio: Path, texts: dict[str, str], sample_rate: int) -> Utterance | str:
    """The utterance `key` with its audio file and transcript, or the reason it cannot be used."""
    if key not in texts:
        return "no transcript line"
    if not texts[key]:
        return "empty transcript"
    try:
        info = verify_audio(audio)
    except AsrError as e:
        return f"unreadable audio: {e}"
    if info.frames == 0:
        return "audio has no samples"
    if info.sample_rate != sample_rate:
        return f"sample rate {info.sample_rate} Hz, expected {sample_rate} Hz"
    if info.channels != 1:
        return f"{info.channels} channels, expected mono"
    return Utterance(key, str(Path(audio).resolve()), round(info.duration, 4), texts[key])
