"""Cut a long recording into speech segments with WebRTC's voice-activity detector.

A model trained on utterances of a few seconds cannot decode an hour in one pass (attention is
quadratic in length, and it never saw such lengths), so `paddle-asr transcribe` decodes long
recordings segment by segment. The detector classifies 30 ms frames; runs of speech separated by
less than `min_silence` are joined, every segment is widened by `padding` on both sides (never
into its neighbour), and a segment longer than `max_segment` is split at its quietest frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paddle_asr.errors import AsrError

FRAME_MS = 30
VAD_RATES = (8000, 16000, 32000, 48000)  # the rates WebRTC's detector accepts


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = 2       # 0 (keeps most audio as speech) .. 3 (most aggressive)
    min_silence: float = 0.3      # seconds of non-speech that end a segment
    # Seconds; shorter bursts are not speech: clicks, and the 90-120 ms the detector flags at the
    # start of a recording with a noise floor before it has adapted (measured).
    min_speech: float = 0.15
    padding: float = 0.2          # seconds added on both sides of each segment
    max_segment: float = 20.0     # seconds; longer speech is split at its quietest frame

    def check(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise AsrError(f"VAD aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness}")
        if self.max_segment < 1.0:
            raise AsrError(f"the longest segment must be at least 1 second, got {self.max_segment}")
        if min(self.min_silence, self.min_speech, self.padding) < 0:
            raise AsrError("VAD min_silence, min_speech and padding must not be negative")
        if 4 * self.padding > self.max_segment:
            # Padding is taken from the segment budget; beyond this, long speech is cut into slivers.
            raise AsrError(f"VAD padding {self.padding} s is too large for segments of at most {self.max_segment} s")


@dataclass(frozen=True)
class Segment:
    start: int  # first sample
    end: int    # one past the last sample


def speech_frames(waveform: np.ndarray, sample_rate: int, aggressiveness: int) -> np.ndarray:
    """One bool per whole 30 ms frame: does WebRTC's detector hear speech in it?"""
    import webrtcvad

    if sample_rate not in VAD_RATES:
        raise AsrError(f"voice-activity detection needs one of {VAD_RATES} Hz, got {sample_rate} Hz")
    frame = sample_rate * FRAME_MS // 1000
    pcm = np.clip(np.round(waveform), -32768, 32767).astype("<i2")
    vad = webrtcvad.Vad(aggressiveness)
    return np.array([vad.is_speech(pcm[i: i + frame].tobytes(), sample_rate)
                     for i in range(0, len(pcm) - frame + 1, frame)], dtype=bool)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the True runs."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _split_long(start: int, end: int, energy: np.ndarray, max_frames: int) -> list[tuple[int, int]]:
    """Split [start, end) into pieces of at most max_frames, cutting at the quietest frame of the
    second half of each window, so that no piece is tiny."""
    pieces = []
    while end - start > max_frames:
        lo, hi = start + max_frames // 2, start + max_frames
        cut = lo + int(np.argmin(energy[lo:hi]))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def speech_runs(flags: np.ndarray, conf: VadConfig) -> list[tuple[int, int]]:
    """[start, end) frame ranges of speech: runs of at least `min_speech`, joined across pauses
    shorter than `min_silence`."""
    frames_per_s = 1000 / FRAME_MS
    runs = [r for r in _runs(flags) if r[1] - r[0] >= max(1, round(conf.min_speech * frames_per_s))]
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and start - merged[-1][1] < conf.min_silence * frames_per_s:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def split_on_silence(waveform: np.ndarray, sample_rate: int, conf: VadConfig = VadConfig()) -> list[Segment]:
    """Speech segments of a mono waveform (int16 range) in order; [] when nothing sounds like speech."""
    conf.check()
    frame = sample_rate * FRAME_MS // 1000
    flags = speech_frames(waveform, sample_rate, conf.aggressiveness)
    if not flags.any():
        return []
    frames_per_s = 1000 / FRAME_MS
    merged = speech_runs(flags, conf)
    n = len(flags)
    energy = np.square(waveform[: n * frame].astype(np.float64)).reshape(n, frame).mean(axis=1)
    pad = round(conf.padding * frames_per_s)
    # Padding comes out of the budget of max_segment, so a padded segment still fits in it.
    max_frames = max(2, int(conf.max_segment * frames_per_s) - 2 * pad)
    pieces = [p for start, end in merged for p in _split_long(start, end, energy, max_frames)]
    # Widen by the padding, but only up to half-way to a neighbour (pieces of one split touch:
    # they get none) and to the file's ends.
    bounds = [0] + [(a_end + b_start) // 2 for (_, a_end), (b_start, _) in zip(pieces, pieces[1:])] + [n]
    max_samples = int(conf.max_segment * sample_rate)
    segments = []
    for k, (start, end) in enumerate(pieces):
        left, right = max(start - pad, bounds[k]), min(end + pad, bounds[k + 1])
        # A segment reaching the last whole frame also takes the partial frame after it, but only
        # as much of it as max_segment leaves room for.
        stop = min(len(waveform), left * frame + max_samples) if right == n else right * frame
        segments.append(Segment(left * frame, stop))
    return segments
