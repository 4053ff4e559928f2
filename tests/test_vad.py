"""Tests for paddle_asr.data.vad (cutting long recordings at silences with WebRTC's VAD).

Recordings are built from the real AISHELL fixture (4.28 s at 16 kHz, speech from about 0.48 s to
3.78 s) joined with silences whose lengths are known, so where each utterance's speech lies in the
joined recording is known to within the tolerance TOL.

Silence between utterances is either digital zeros or a faint Gaussian noise floor (std 30 in the
int16 range, about -60 dBFS) laid over the whole recording. Measured while writing these tests:
when the noise fills only the gaps (the utterances keep the fixture's own background), WebRTC's
detector at the default aggressiveness 2 hears the noise as speech for seconds after each
utterance, so that construction is tested at aggressiveness 3, where it does not.
"""
from __future__ import annotations

import numpy as np
import pytest

from paddle_asr.data.audio import read_audio, resample
from paddle_asr.data.vad import FRAME_MS, Segment, VadConfig, speech_frames, split_on_silence
from paddle_asr.errors import AsrError
from tests.conftest import real_fixture

SPEECH = (0.48, 3.78)  # seconds of speech inside the fixture
TOL = 0.1              # seconds
NOISE_STD = 30.0


@pytest.fixture(scope="module")
def utt() -> tuple[np.ndarray, int]:
    wave, rate = read_audio(real_fixture("aishell-BAC009S0724W0121.wav"))
    assert rate == 16000 and abs(len(wave) / rate - 4.28) < 0.01
    return wave, rate


def join(wave: np.ndarray, rate: int, gaps: list[float], *, noise: str = "none", seed: int = 0):
    """gaps[0] utt gaps[1] utt ... utt gaps[-1]; returns (recording, [(speech start, end) seconds]).

    noise: "none" (digital zeros between utterances), "floor" (std-30 noise over the whole
    recording) or "gaps" (std-30 noise in the gaps only)."""
    rng = np.random.default_rng(seed)
    parts, spans, at = [], [], 0
    for k, gap in enumerate(gaps):
        n = int(round(gap * rate))
        parts.append(rng.normal(0, NOISE_STD, n) if noise == "gaps" else np.zeros(n))
        at += n
        if k < len(gaps) - 1:
            spans.append((at / rate + SPEECH[0], at / rate + SPEECH[1]))
            parts.append(wave)
            at += len(wave)
    rec = np.concatenate(parts)
    if noise == "floor":
        rec = rec + rng.normal(0, NOISE_STD, len(rec))
    return rec.astype(np.float32), spans


def check_well_formed(segments: list[Segment], length: int) -> None:
    """Ordered, non-empty, non-overlapping, inside the recording."""
    for seg in segments:
        assert 0 <= seg.start < seg.end <= length
    for a, b in zip(segments, segments[1:]):
        assert a.end <= b.start


def check_contains(segments: list[Segment], spans: list[tuple[float, float]], rate: int) -> None:
    assert len(segments) == len(spans), ([(s.start / rate, s.end / rate) for s in segments], spans)
    for seg, (start, end) in zip(segments, spans):
        assert seg.start / rate <= start + TOL, (seg, start)
        assert seg.end / rate >= end - TOL, (seg, end)


# ------------------------------------------------------------------ speech_frames
def test_speech_frames_on_the_fixture(utt):
    wave, rate = utt
    flags = speech_frames(wave, rate, 2)
    frame_s = FRAME_MS / 1000
    assert flags.dtype == bool
    assert len(flags) == len(wave) // (rate * FRAME_MS // 1000)  # whole 30 ms frames only: 142
    inside = flags[int(0.6 / frame_s): int(3.6 / frame_s)]
    assert inside.mean() > 0.9
    assert not flags[int(3.9 / frame_s):].any()  # the last 0.38 s is background only
    assert not speech_frames(np.zeros(rate), rate, 2).any()


def test_speech_frames_at_8k_uses_240_sample_frames(utt):
    wave, rate = utt
    wave8 = resample(wave, rate, 8000)
    flags = speech_frames(wave8, 8000, 2)
    assert len(flags) == len(wave8) // 240
    assert flags[int(0.6 / 0.03): int(3.6 / 0.03)].mean() > 0.9
    segments = split_on_silence(wave8, 8000)
    check_contains(segments, [SPEECH], 8000)


# ------------------------------------------------------------------ one segment per utterance
@pytest.mark.parametrize("noise,conf", [
    ("none", VadConfig()),
    ("floor", VadConfig()),
    ("gaps", VadConfig(aggressiveness=3)),
], ids=["zero-gaps", "noise-floor", "noise-gaps-aggr3"])
@pytest.mark.parametrize("gaps", [[1.0, 1.5, 0.7, 1.0], [0.3, 2.0, 1.0, 0.0]], ids=["gaps-a", "gaps-b"])
def test_one_segment_per_utterance(utt, noise, conf, gaps):
    wave, rate = utt
    rec, spans = join(wave, rate, gaps, noise=noise)
    segments = split_on_silence(rec, rate, conf)
    check_well_formed(segments, len(rec))
    check_contains(segments, spans, rate)
    # Each segment holds one utterance only: it ends before the next utterance's speech starts.
    for seg, (next_start, _) in zip(segments, spans[1:]):
        assert seg.end / rate < next_start
    # ... and sample positions are whole 30 ms frames except the very end of the recording.
    frame = rate * FRAME_MS // 1000
    for seg in segments:
        assert seg.start % frame == 0
        assert seg.end % frame == 0 or seg.end == len(rec)


def test_min_silence_joins_utterances(utt):
    wave, rate = utt
    rec, spans = join(wave, rate, [1.0, 1.0, 1.0, 1.0])
    # Between two utterances there are ~0.5 + 1.0 + 0.48 s of non-speech: under 3 s, so they join.
    segments = split_on_silence(rec, rate, VadConfig(min_silence=3.0))
    assert len(segments) == 1
    assert segments[0].start / rate <= spans[0][0] + TOL
    assert segments[0].end / rate >= spans[-1][1] - TOL


# ------------------------------------------------------------------ padding
def test_padding_widens_by_padding_but_never_past_half_way(utt):
    wave, rate = utt
    frame = rate * FRAME_MS // 1000
    rec, spans = join(wave, rate, [2.0, 1.5, 0.7, 2.0])
    bare = split_on_silence(rec, rate, VadConfig(padding=0.0))
    padded = split_on_silence(rec, rate, VadConfig(padding=0.2))
    wide = split_on_silence(rec, rate, VadConfig(padding=1.5))
    assert len(bare) == len(padded) == len(wide) == 3
    # Between unpadded segments there are ~0.5 + gap + 0.48 s: 1.2 .. 2.0 s here.
    gaps = [b.start - a.end for a, b in zip(bare, bare[1:])]
    assert all(1.0 * rate < g < 2.5 * rate for g in gaps)

    # 0.2 s (7 frames) fits into every gap: exactly 7 frames on both sides.
    pad = round(0.2 * 1000 / FRAME_MS) * frame
    for b, p in zip(bare, padded):
        assert (p.start, p.end) == (b.start - pad, b.end + pad)

    # 1.5 s (50 frames) of padding does not fit in any gap (3 s > 2.5 s): neighbours meet within
    # half a frame of half-way between their unpadded segments; the outer ends (2 s from the
    # file's ends) get all 1.5 s.
    full = round(1.5 * 1000 / FRAME_MS) * frame
    assert wide[0].start == bare[0].start - full
    assert wide[-1].end == bare[-1].end + full
    for k in range(len(bare) - 1):
        half_way = (bare[k].end + bare[k + 1].start) / 2
        assert wide[k].end == wide[k + 1].start  # they touch, neither crosses the other
        assert abs(wide[k].end - half_way) <= frame / 2
    check_well_formed(wide, len(rec))
    check_contains(wide, spans, rate)


def test_padding_stops_at_the_file_ends(utt):
    wave, rate = utt
    # The fixture alone: speech starts 0.48 s in, 1 s of padding would reach before the file.
    segments = split_on_silence(wave, rate, VadConfig(padding=1.0))
    assert segments == [Segment(0, len(wave))]


# ------------------------------------------------------------------ nothing to find
@pytest.mark.parametrize("seconds", [3.0, 0.02])
def test_pure_silence_gives_no_segments(seconds):
    rate = 16000
    n = int(seconds * rate)
    assert split_on_silence(np.zeros(n, dtype=np.float32), rate) == []
    noise = np.random.default_rng(3).normal(0, NOISE_STD, n).astype(np.float32)
    assert split_on_silence(noise, rate) == []


@pytest.mark.parametrize("at", [1.0, 1.5, 2.0, 2.5, 3.0])
def test_short_burst_is_not_speech(utt, at):
    wave, rate = utt
    # 30 ms of real speech in 2 s of silence each side: the detector flags it (3-4 frames with its
    # hangover), fewer than min_speech's 5 frames (0.15 s), so it is dropped.
    burst = wave[int(at * rate): int((at + 0.03) * rate)]
    rec = np.concatenate([np.zeros(2 * rate), burst, np.zeros(2 * rate)]).astype(np.float32)
    assert 0 < speech_frames(rec, rate, 2).sum() < 5
    assert split_on_silence(rec, rate) == []
    kept = split_on_silence(rec, rate, VadConfig(min_speech=0.0))
    assert len(kept) == 1 and kept[0].start / rate <= 2.0 and kept[0].end / rate >= 2.03


# ------------------------------------------------------------------ long speech is split
def test_long_speech_is_split_to_max_segment(utt):
    wave, rate = utt
    speech = wave[int(SPEECH[0] * rate): int(SPEECH[1] * rate)]  # 3.3 s of speech
    gap = np.zeros(int(0.1 * rate))  # 0.1 s < min_silence 0.3 s: the utterances join
    rec = np.concatenate([np.zeros(rate // 2), speech, gap, speech, gap, speech, gap, speech,
                          np.zeros(rate // 2)]).astype(np.float32)  # 14.5 s, speech 0.5 .. 14.0 s
    speech_start, speech_end = 0.5, len(rec) / rate - 0.5

    whole = split_on_silence(rec, rate)  # max_segment 20 s: one segment
    assert len(whole) == 1
    assert whole[0].start / rate <= speech_start + TOL and whole[0].end / rate >= speech_end - TOL

    segments = split_on_silence(rec, rate, VadConfig(max_segment=5.0))
    check_well_formed(segments, len(rec))
    assert len(segments) >= 3  # 13.5 s of speech in pieces of at most 5 s
    assert all(seg.end - seg.start <= 5 * rate for seg in segments)
    # The pieces of one split touch (nothing between them is lost) and still cover the speech.
    for a, b in zip(segments, segments[1:]):
        assert a.end == b.start
    assert segments[0].start / rate <= speech_start + TOL
    assert segments[-1].end / rate >= speech_end - TOL
    # Cuts land in the second half of a window, so no piece is tiny.
    assert all(seg.end - seg.start >= 2 * rate for seg in segments)


def test_padding_counts_towards_max_segment(utt):
    wave, rate = utt
    speech = wave[int(SPEECH[0] * rate): int(SPEECH[1] * rate)]
    # 3.3 s + 0.1 s + 1.2 s: one run of speech of about 4.7 s, 1 s of silence on both sides.
    rec = np.concatenate([np.zeros(rate), speech, np.zeros(int(0.1 * rate)), speech[: int(1.2 * rate)],
                          np.zeros(rate)]).astype(np.float32)
    bare = split_on_silence(rec, rate, VadConfig(padding=0.0))
    assert len(bare) == 1 and 4.5 * rate < bare[0].end - bare[0].start < 5 * rate
    # Unpadded it would fit in 5 s, but with 0.2 s on both sides it would not: it is split.
    segments = split_on_silence(rec, rate, VadConfig(max_segment=5.0))
    assert len(segments) == 2
    assert all(seg.end - seg.start <= 5 * rate for seg in segments)
    assert segments[0].end == segments[1].start
    assert (segments[0].start, segments[1].end) == (bare[0].start - 7 * 480, bare[0].end + 7 * 480)


def test_segment_reaching_the_file_end_still_fits_max_segment(utt):
    wave, rate = utt
    frame = rate * FRAME_MS // 1000
    bare = split_on_silence(wave, rate, VadConfig(padding=0.0))
    assert len(bare) == 1
    first, last = bare[0].start // frame, bare[0].end // frame  # speech frames [first, last)
    speech_frames_n = last - first
    # Cut the file 7 frames (the 0.2 s padding) + 400 samples after the speech, so the right
    # padding reaches the file's end and the segment runs on into the 400-sample partial frame.
    rec = wave[: (last + 7) * frame + 400]
    # max_segment leaves room for the speech, its padding on both sides and half a frame (240
    # samples): the speech is not split, and the segment must stop 160 samples short of the end.
    conf = VadConfig(max_segment=(speech_frames_n + 14.5) * FRAME_MS / 1000)
    segments = split_on_silence(rec, rate, conf)
    assert len(segments) == 1
    seg = segments[0]
    assert seg.start == (first - 7) * frame
    assert seg.end - seg.start <= conf.max_segment * rate
    assert seg.end >= (last + 7) * frame  # all of the padding is kept


# ------------------------------------------------------------------ errors
def test_unsupported_sample_rate_is_an_error():
    wave = np.zeros(22050, dtype=np.float32)
    with pytest.raises(AsrError, match="22050"):
        split_on_silence(wave, 22050)
    with pytest.raises(AsrError):
        speech_frames(wave, 44100, 2)


@pytest.mark.parametrize("conf", [
    VadConfig(aggressiveness=5),
    VadConfig(aggressiveness=-1),
    VadConfig(max_segment=0.5),
    VadConfig(padding=-0.1),
    VadConfig(min_silence=-1.0),
], ids=["aggr5", "aggr-1", "max0.5", "neg-padding", "neg-min-silence"])
def test_bad_config_is_an_error(conf):
    with pytest.raises(AsrError):
        conf.check()
    with pytest.raises(AsrError):
        split_on_silence(np.zeros(16000, dtype=np.float32), 16000, conf)


def test_edge_config_values_are_accepted():
    for conf in (VadConfig(aggressiveness=0), VadConfig(aggressiveness=3), VadConfig(max_segment=1.0),
                 VadConfig(padding=0.0, min_silence=0.0, min_speech=0.0)):
        conf.check()
        assert split_on_silence(np.zeros(16000, dtype=np.float32), 16000, conf) == []
