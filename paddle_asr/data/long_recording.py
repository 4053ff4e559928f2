"""A long recording assembled from test utterances, for checking long-form transcription and the
alignment of its concatenated reference (`align`).

Utterances are joined with silences of varying length (and faint noise, so the detector meets a
realistic floor rather than digital zeros) until the target duration. The parts file records each
utterance's key, reference text and where it sits, so segmentation and text can be checked.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from paddle_asr.artifacts import atomic_write_text
from paddle_asr.data.audio import read_audio
from paddle_asr.data.manifest import Utterance
from paddle_asr.errors import AsrError


def assemble_recording(utts: list[Utterance], seconds: float, sample_rate: int, *, seed: int = 0,
                       min_gap: float = 0.8, max_gap: float = 2.5, noise_level: float = 30.0
                       ) -> tuple[np.ndarray, list[dict]]:
    """(waveform in the int16 range, parts [{key, text, start, end}]) of about `seconds` seconds.

    Utterances are taken in order until the next would pass `seconds`; gaps are drawn uniformly
    from [min_gap, max_gap] seconds, with one gap before the first utterance and after the last.
    """
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    parts: list[dict] = []
    position = 0

    def gap() -> None:
        nonlocal position
        n = int(rng.uniform(min_gap, max_gap) * sample_rate)
        pieces.append((noise.standard_normal(n) * noise_level).astype(np.float32))
        position += n

    gap()
    for utt in utts:
        waveform, rate = read_audio(Path(utt.wav), expected_rate=sample_rate)
        if (position + len(waveform)) / sample_rate + min_gap > seconds:
            break
        parts.append({"key": utt.key, "text": utt.text, "start": round(position / sample_rate, 3),
                      "end": round((position + len(waveform)) / sample_rate, 3)})
        pieces.append(waveform)
        position += len(waveform)
        gap()
    if not parts:
        raise AsrError(f"no utterance fits in {seconds} s; give a longer duration")
    return np.concatenate(pieces), parts


def write_long_recording(utts: list[Utterance], out_wav: Path, seconds: float, sample_rate: int, *,
                         seed: int = 0) -> list[dict]:
    """Write `out_wav`, `<stem>.parts.json` and a one-line reference `<stem>.text` (`<stem> <all texts>`,
    joined as transcripts are: Chinese without a separator, words in Latin script with a space)."""
    out_wav = Path(out_wav)
    waveform, parts = assemble_recording(utts, seconds, sample_rate, seed=seed)
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_wav.with_name(out_wav.name + ".tmp.wav")
    sf.write(str(tmp), np.clip(np.round(waveform), -32768, 32767).astype(np.int16), sample_rate, subtype="PCM_16")
    tmp.replace(out_wav)
    atomic_write_text(out_wav.with_suffix(".parts.json"), json.dumps(parts, ensure_ascii=False, indent=1))
    from paddle_asr.transcribe import join_texts

    atomic_write_text(out_wav.with_suffix(".text"), f"{out_wav.stem} {join_texts(p['text'] for p in parts)}\n")
    return parts


def _overlap(a: dict, b: dict) -> float:
    return min(a["end"], b["end"]) - max(a["start"], b["start"])


def compare_with_parts(parts: list[dict], transcript: dict) -> dict:
    """How a long-recording transcript (`transcribe --format json`) lines up with the parts it was
    assembled from: segment for part, text for text, and whether all times increase.

    Returns {"parts", "segments", "one_to_one" (each part in exactly one segment holding no other
    part), "times_increase", "pairs": [(key, reference, segment text)], "report" (ScoreReport of the
    segment texts against the parts)}.
    """
    from paddle_asr.metrics.score import score
    from paddle_asr.transcribe import join_texts

    segments = transcript["segments"]
    owner = [[k for k, seg in enumerate(segments) if _overlap(part, seg) > 0] for part in parts]
    claimed = [[p for p, part in enumerate(parts) if _overlap(part, seg) > 0] for seg in segments]
    one_to_one = all(len(o) == 1 and claimed[o[0]] == [p] for p, o in enumerate(owner))
    times = [t for seg in segments
             for t in [seg["start"]] + [x for tok in seg["tokens"] for x in (tok["start"], tok["end"])] + [seg["end"]]]
    pairs = [(part["key"], part["text"], join_texts(segments[k]["text"] for k in o)) for part, o in zip(parts, owner)]
    report = score({key: ref for key, ref, _ in pairs}, {key: hyp for key, _, hyp in pairs}, verbose=0)
    return {"parts": len(parts), "segments": len(segments), "one_to_one": one_to_one,
            "times_increase": all(a <= b for a, b in zip(times, times[1:])), "pairs": pairs, "report": report}


def speech_bounds(waveform: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(start, end) seconds of the speech in one utterance's audio: from the first to the end of the
    last 10 ms frame whose energy is within 35 dB of the loudest frame and 10 dB above the quietest
    5 % (the silence a corpus leaves around its utterances is not speech)."""
    hop = sample_rate // 100
    n = len(waveform) // hop
    if n == 0:
        raise AsrError(f"{len(waveform)} samples hold no 10 ms frame")
    energy = 10 * np.log10(np.square(waveform[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1) + 1e-3)
    loud = np.flatnonzero(energy > max(energy.max() - 35.0, np.percentile(energy, 5) + 10.0))
    if not len(loud):  # a constant level: no silence to tell apart
        return 0.0, n * hop / sample_rate
    return loud[0] * hop / sample_rate, (loud[-1] + 1) * hop / sample_rate


def _words_of_parts(parts: list[dict], words: list[dict]) -> list[list[dict]]:
    """The alignment's words of each part, in order: words are taken until they spell its text."""
    out, k = [], 0
    for part in parts:
        target, spelled, mine = "".join(part["text"].split()), "", []
        while len(spelled) < len(target) and k < len(words):
            mine.append(words[k])
            spelled += "".join(words[k]["word"].split())
            k += 1
        if spelled != target:
            raise AsrError(f"the alignment's words do not spell part {part['key']} ({part['text']!r}, got "
                           f"{spelled!r}); align the long recording's own <stem>.text")
        out.append(mine)
    return out


def read_alignment(path: Path) -> dict:
    """The first object of an `align --format json` file; AsrError when there is none."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AsrError(f"cannot read the alignment {path} ({e})") from None
    if not lines:
        raise AsrError(f"{path} is empty: align wrote no alignment (its errors name each utterance it could not "
                       "align, and why)")
    try:
        return json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise AsrError(f"{path}:1: not JSON ({e}); write it with paddle-asr align --format json") from None


def compare_alignment_with_parts(parts: list[dict], alignment: dict, waveform: np.ndarray, sample_rate: int,
                                 tolerance_frames: int = 2) -> dict:
    """How the alignment of a long recording's concatenated reference (`align --format json`) finds
    the utterances it was assembled from: for each part, the first word's start against where its
    speech starts and the last word's end against where it ends (`speech_bounds` of the part's
    audio), within `tolerance_frames` encoder frames.

    Returns {"tolerance" (seconds), "rows": [(key, speech start, first start, speech end, last end,
    within)], "within" (parts with both ends within), "fraction"}.
    """
    tolerance = tolerance_frames * alignment["frame_seconds"] + 1e-6  # times are rounded to 1 ms
    rows = []
    for part, words in zip(parts, _words_of_parts(parts, alignment["words"])):
        audio = waveform[round(part["start"] * sample_rate): round(part["end"] * sample_rate)]
        start, end = (part["start"] + t for t in speech_bounds(audio, sample_rate))
        first, last = words[0]["start"], words[-1]["end"]
        rows.append((part["key"], start, first, end, last,
                     abs(first - start) <= tolerance and abs(last - end) <= tolerance))
    within = sum(r[-1] for r in rows)
    return {"tolerance": tolerance, "rows": rows, "within": within, "fraction": within / len(rows) if rows else 0.0}
