"""Reading audio files into int16-range float32 waveforms, with errors that name the file."""

from __future__ import annotations

import io
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from paddle_asr.errors import AsrError


@dataclass
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _check_file(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise AsrError(f"{path} is a directory, not an audio file")
    if not path.exists():
        raise AsrError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise AsrError(f"{path} is an empty file (0 bytes)")
    return path


def audio_info(path: Path) -> AudioInfo:
    """Header facts of an audio file; raises AsrError naming the file when it cannot be read."""
    path = _check_file(path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AsrError(f"{path} is not a readable audio file ({e})") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def _wav_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes the WAV header declares for its data chunk, bytes present) when the file is cut short.

    libsndfile quietly reads what is there of a truncated WAV, so a file cut in the middle would
    pass as a shorter utterance that no longer matches its transcript."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = path.stat().st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                present = size - pos - 8
                # 0xFFFFFFFF: a streaming writer that never filled in the size; nothing to compare.
                return (declared, present) if declared != 0xFFFFFFFF and present < declared else None
            pos += 8 + declared + (declared & 1)
    return None


def verify_audio(path: Path) -> AudioInfo:
    """`audio_info`, plus the faults a header cannot show: a WAV cut short, a compressed file
    (FLAC, OGG, MP3) that does not decode to its end, float samples that are NaN or infinite.
    Raises AsrError with the reason. Only compressed and float files are decoded here."""
    info = audio_info(path)
    path = Path(path)
    subtype = sf.info(str(path)).subtype
    shortfall = _wav_data_shortfall(path)
    if shortfall:
        raise AsrError(f"{path} is truncated: its header declares {shortfall[0]} bytes of samples, "
                       f"the file holds {shortfall[1]}")
    if sf.info(str(path)).format != "WAV" or subtype in ("FLOAT", "DOUBLE"):
        try:
            data, _ = sf.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as e:
            raise AsrError(f"{path} does not decode to its end ({e}): the file is corrupt or truncated") from None
        if data.shape[0] != info.frames:
            raise AsrError(f"{path} decodes to {data.shape[0]} samples, its header says {info.frames}: truncated")
        if not np.isfinite(data).all():
            raise AsrError(f"{path} has NaN or infinite samples")
    return info


def read_audio(path: Path, *, expected_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Return (waveform, sample_rate): mono float32 in the int16 range (x 32768, as Kaldi expects).

    Multi-channel audio is averaged to mono. With `expected_rate`, another rate is an error:
    training data must already be at the model's rate (stage 0 filters it).
    """
    path = _check_file(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AsrError(f"cannot read audio {path} ({e}); check that the file is a complete WAV or FLAC") from None
    if data.shape[0] == 0:
        raise AsrError(f"{path} holds no audio samples")
    if expected_rate is not None and rate != expected_rate:
        raise AsrError(f"{path} has sample rate {rate} Hz, expected {expected_rate} Hz")
    return _to_mono_int16_range(data), int(rate)


def _to_mono_int16_range(data: np.ndarray) -> np.ndarray:
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return (mono * 32768.0).astype(np.float32)


def decode_audio(encoded: bytes) -> tuple[np.ndarray, int]:
    """`read_audio` for the bytes of an audio file (e.g. a tar shard member)."""
    try:
        data, rate = sf.read(io.BytesIO(encoded), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AsrError(f"not readable audio ({e})") from None
    if data.shape[0] == 0:
        raise AsrError("holds no audio samples")
    return _to_mono_int16_range(data), int(rate)


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact for rational rate ratios such as 44100 -> 16000."""
    if from_rate == to_rate:
        return waveform
    from scipy.signal import resample_poly

    g = gcd(from_rate, to_rate)
    return resample_poly(waveform, to_rate // g, from_rate // g).astype(np.float32)


def read_audio_resampled(path: Path, target_rate: int) -> np.ndarray:
    """Any readable file, any rate and channel count -> mono waveform at `target_rate`."""
    waveform, rate = read_audio(path)
    return resample(waveform, rate, target_rate)
