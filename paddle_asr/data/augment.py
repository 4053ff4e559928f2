"""Training-time augmentation: speed perturbation on the waveform, voice perturbation (VTLP and a
random spectral envelope) in the fbank, SpecAugment on the fbank.

Speed perturbation follows WeNet (sox `speed` then `rate` back to the original rate; factor drawn
uniformly from the configured speeds, as wenet/dataset/processor.py `speed_perturb`).
SpecAugment follows WeNet's masks on the un-normalised fbank, filled with zeros: widths uniform
integers in [1, max]; starts uniform over the axis; masks clipped at the end; time masks first, then
frequency masks (wenet/dataset/processor.py `spec_aug`; docs/training.md). The optional time warp
(`max_w` > 0) is PaddleSpeech's "PIL" time warp, run before the masks as in PaddleSpeech's
time_warp -> freq_mask -> time_mask pipeline.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from paddle_asr.config import SpecAugmentConfig, SpeedPerturbConfig, VoicePerturbConfig


def speed_perturb(waveform: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """The waveform played `speed` times faster (tempo and pitch together), at the same rate.

    sox `speed s` relabels the audio as recorded at rate*s and `rate` resamples it back to `rate`,
    which is resampling by 1/s: the output has about len/s samples. `sample_rate` is unchanged by
    definition, so it only documents the call (the ratio alone decides the result).
    """
    if not math.isfinite(speed) or speed <= 0.0:
        raise ValueError(f"speed must be a positive number, got {speed}")
    if speed == 1.0:
        return waveform  # WeNet skips sox for 1.0 too; no filtering, no copy
    # 0.9 -> 9/10 -> up 10, down 9. A small denominator keeps the polyphase filter short.
    ratio = Fraction(speed).limit_denominator(100)
    if ratio.numerator == 0:
        raise ValueError(f"speed {speed} is too small to approximate with a denominator of at most 100")
    up, down = ratio.denominator, ratio.numerator
    if up == down:
        return waveform
    out = resample_poly(np.asarray(waveform), up, down)
    return out.astype(waveform.dtype if np.issubdtype(waveform.dtype, np.floating) else np.float32)


def choose_speed(conf: SpeedPerturbConfig, rng: np.random.Generator) -> float:
    """A factor drawn uniformly from `conf.speeds`; 1.0 (and no draw) when disabled."""
    if not conf.enabled:
        return 1.0
    if not conf.speeds:
        raise ValueError("speed perturbation is enabled but speed_perturb.speeds is empty")
    return float(conf.speeds[int(rng.integers(0, len(conf.speeds)))])


_ENVELOPE_COSINES = 4  # the envelope's detail: up to 4 peaks or dips across the mel range


def choose_voice(conf: VoicePerturbConfig, num_bins: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """One utterance's voice perturbation: the VTLN warp factor, uniform in [min_warp, max_warp], and
    the log-energy envelope to add to its fbank bins (natural-log units, zeros when envelope_db is 0).
    The envelope is a random sum of low-order cosines over the bins, scaled to a peak drawn
    uniformly up to envelope_db: smooth, like a resonance or a microphone's response. With
    high_cut_db, the bins above a random cutoff are then attenuated, up to high_cut_db."""
    if not conf.enabled:
        return 1.0, np.zeros(num_bins, dtype=np.float32)
    warp = float(rng.uniform(conf.min_warp, conf.max_warp))
    envelope = np.zeros(num_bins, dtype=np.float64)
    if conf.envelope_db > 0.0:
        k = np.arange(1, _ENVELOPE_COSINES + 1)[:, None]
        x = np.linspace(0.0, 1.0, num_bins)[None, :]
        amplitude = rng.standard_normal((_ENVELOPE_COSINES, 1))
        phase = rng.uniform(0.0, 2.0 * np.pi, (_ENVELOPE_COSINES, 1))
        curve = (amplitude * np.cos(np.pi * k * x + phase)).sum(axis=0)
        envelope += curve / max(float(np.abs(curve).max()), 1e-9) * rng.uniform(0.0, conf.envelope_db)
    if conf.high_cut_db > 0.0:
        envelope -= _high_cut(num_bins, rng.uniform(*_HIGH_CUT_RANGE), rng.uniform(0.0, conf.high_cut_db))
    return warp, (envelope * _DB_TO_LN).astype(np.float32)


_DB_TO_LN = math.log(10.0) / 10.0  # dB of power -> natural-log energy, the fbank's unit
_HIGH_CUT_RANGE = (0.45, 0.8)  # where the cut starts, as a fraction of the mel range
_HIGH_CUT_EDGE = 2.0  # bins over which the cut fades in (a logistic edge, as a filter's slope)


def _high_cut(num_bins: int, cutoff: float, depth_db: float) -> np.ndarray:
    """`depth_db` dB in the bins above `cutoff` (a fraction of the bins), fading in over a few bins."""
    bins = np.arange(num_bins, dtype=np.float64)
    return depth_db / (1.0 + np.exp(-(bins - cutoff * (num_bins - 1)) / _HIGH_CUT_EDGE))


def _resize_time(x: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of `x` [frames, bins] along time to `length` frames.

    PaddleSpeech resizes with PIL bicubic (pixel-centre sampling); linear interpolation with the
    end frames mapped onto the end frames is close enough for augmentation and keeps the first
    and last frame of each side exactly, so the warp is continuous and the utterance ends intact.
    """
    n = x.shape[0]
    if length == n:
        return x.copy()
    if n == 1 or length == 1:
        return np.repeat(x[:1], length, axis=0)
    pos = np.linspace(0.0, n - 1, length)  # exact end points: last output frame == last input frame
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    frac = (pos - lo)[:, None]
    src = x.astype(np.float64)
    return (src[lo] * (1.0 - frac) + src[lo + 1] * frac).astype(x.dtype)


def time_warp(feats: np.ndarray, max_w: int, rng: np.random.Generator) -> np.ndarray:
    """PaddleSpeech's PIL time warp: frames [0, c) stretched to w frames, [c, T) to T - w.

    c is uniform in [max_w, T - max_w) and w uniform in [c - max_w + 1, c + max_w] (PaddleSpeech's
    `randrange(c - W, c + W) + 1`, so both sides keep at least one frame). Utterances with
    T <= 2 * max_w are returned unchanged without drawing from `rng`, as PaddleSpeech does.
    """
    frames = feats.shape[0]
    if max_w <= 0 or frames - max_w <= max_w:
        return feats
    centre = int(rng.integers(max_w, frames - max_w))
    warped = int(rng.integers(centre - max_w, centre + max_w)) + 1
    left = _resize_time(feats[:centre], warped)
    right = _resize_time(feats[centre:], frames - warped)
    return np.concatenate([left, right], axis=0)


def spec_augment(feats: np.ndarray, conf: SpecAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Time warp (when max_w > 0), then WeNet's time masks, then frequency masks; input untouched.

    With max_w = 0 nothing is drawn for the warp, so a seeded `rng` gives the same masks as
    before the warp existed.
    """
    if not conf.enabled:
        return feats
    out = feats.copy()
    if conf.max_w > 0:
        out = time_warp(out, conf.max_w, rng)
    frames, bins = out.shape
    # "mean": each bin's own mean over the utterance, which the model's CMVN maps to about 0. Zero
    # (WeNet) is far from a bin that is constant: 161-bin fbank has empty, constant bins whose CMVN
    # scale is ~1e10, so a zero there reaches the network as ~1e11.
    fill = out.mean(axis=0) if conf.fill == "mean" else np.zeros(bins, out.dtype)
    for _ in range(conf.num_t_mask):
        if frames < 2 or conf.max_t < 1:
            break
        start = int(rng.integers(0, frames))
        width = int(rng.integers(1, conf.max_t + 1))
        out[start : min(frames, start + width), :] = fill
    for _ in range(conf.num_f_mask):
        if conf.max_f < 1:
            break
        start = int(rng.integers(0, bins))
        width = int(rng.integers(1, conf.max_f + 1))
        stop = min(bins, start + width)
        out[:, start:stop] = fill[start:stop]
    return out


def join_pairs(feats: list[np.ndarray], labels: list[list[int]], keys: list[str], texts: list[str], *,
               max_frames: int, rng: np.random.Generator) -> tuple[list, list, list, list]:
    """Neighbouring utterances (0 and 1, 2 and 3, ...) joined end to end: fbank, token ids,
    ids as "a+b", transcripts with a space between. The order of each pair is drawn from `rng`; a
    pair longer than `max_frames` and an odd last utterance stay single."""
    out: tuple[list, list, list, list] = ([], [], [], [])
    i = 0
    while i < len(feats):
        pair = [i, i + 1] if i + 1 < len(feats) else [i]
        if len(pair) == 2 and feats[i].shape[0] + feats[i + 1].shape[0] > max_frames:
            pair = [i]
        if len(pair) == 2 and rng.random() < 0.5:
            pair.reverse()
        out[0].append(np.concatenate([feats[j] for j in pair]))
        out[1].append([t for j in pair for t in labels[j]])
        out[2].append("+".join(keys[j] for j in pair))
        out[3].append(" ".join(texts[j] for j in pair))
        i += len(pair)
    return out
