"""Kaldi-compatible log-mel filterbank (kaldi-native-fbank) and global CMVN statistics.

Settings are Kaldi compute-fbank-feats' as WeNet and PaddleSpeech set them (docs/fbank_cmvn.md):
povey window, 25/10 ms, pre-emphasis 0.97, DC removal, power spectrum, mel banks from 20 Hz to Nyquist
(`high_freq` moves the top), snip_edges, natural log. Waveforms are scaled to the int16 range
(x 32768), as WeNet and PaddleSpeech do, so statistics and checkpoints are interchangeable.
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np

from paddle_asr.config import FeatureConfig
from paddle_asr.errors import AsrError


def num_frames(num_samples: int, config: FeatureConfig) -> int:
    """Frames produced with snip_edges: 1 + (samples - window) // shift, none below one window (Kaldi)."""
    win = int(config.sample_rate * config.frame_length_ms / 1000)
    hop = int(config.sample_rate * config.frame_shift_ms / 1000)
    return 0 if num_samples < win else 1 + (num_samples - win) // hop


def _fbank_options(config: FeatureConfig) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(config.sample_rate)
    opts.frame_opts.frame_length_ms = float(config.frame_length_ms)
    opts.frame_opts.frame_shift_ms = float(config.frame_shift_ms)
    # Dither is added below with our own seeded generator so that training is reproducible.
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = int(config.num_mel_bins)
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = float(config.high_freq)
    opts.energy_floor = 0.0
    opts.use_energy = False
    return opts


def compute_fbank(
    waveform: np.ndarray,
    config: FeatureConfig,
    *,
    dither: float = 0.0,
    rng: np.random.Generator | None = None,
    vtln_warp: float = 1.0,
) -> np.ndarray:
    """Log-mel fbank `[frames, num_mel_bins]` float32 of a mono waveform in the int16 range; with
    `vtln_warp` != 1 the mel banks are warped as Kaldi's VTLN warps them (`vtln_warp_freq`)."""
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"compute_fbank expects a mono 1-D waveform, got shape {samples.shape}")
    if dither > 0.0:
        rng = rng or np.random.default_rng()
        samples = samples + dither * rng.standard_normal(samples.shape[0]).astype(np.float32)
    if vtln_warp != 1.0:
        # kaldi-native-fbank's Python binding takes no warp factor; the NumPy fbank is the same
        # computation (only its energy floor differs, which dithered training audio never reaches).
        return _fbank_numpy(samples, config, vtln_warp)
    fbank = kaldi_fbank(config)
    if fbank is None:
        return _fbank_numpy(samples, config)
    fbank.accept_waveform(float(config.sample_rate), samples)
    fbank.input_finished()
    return take_frames(fbank, 0, config)


def kaldi_fbank(config: FeatureConfig) -> knf.OnlineFbank | None:
    """kaldi-native-fbank's fbank computer for `config`, or None for mel banks it refuses: Kaldi
    refuses a triangle that holds no FFT bin (at 25 ms / 16 kHz, from 127 bins on), and
    PaddleSpeech's DeepSpeech2 uses 161 bins, computed without that check (`_fbank_numpy`)."""
    try:
        return knf.OnlineFbank(_fbank_options(config))
    except ValueError as e:
        if "num_mel_bins too large" not in str(e):
            raise
        return None


def take_frames(fbank: knf.OnlineFbank, first: int, config: FeatureConfig) -> np.ndarray:
    """The frames from `first` to those ready, `[n, num_mel_bins]` float32, popped from `fbank`."""
    n = fbank.num_frames_ready - first
    if n <= 0:
        return np.zeros((0, config.num_mel_bins), dtype=np.float32)
    frames = np.stack([fbank.get_frame(i) for i in range(first, first + n)]).astype(np.float32)
    fbank.pop(n)
    return frames


PADDLESPEECH_ENERGY_FLOOR = 1e-7


def _window_sizes(config: FeatureConfig) -> tuple[int, int, int]:
    """(window, shift, FFT size) in samples; the FFT size is the window rounded up to a power of two."""
    win = int(config.sample_rate * config.frame_length_ms / 1000)
    hop = int(config.sample_rate * config.frame_shift_ms / 1000)
    return win, hop, 1 << (win - 1).bit_length()


def _mel(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def _inverse_mel(mel):
    return 700.0 * (np.exp(np.asarray(mel, dtype=np.float64) / 1127.0) - 1.0)


# Kaldi's MelBanksOptions defaults: vtln_low 100 Hz, vtln_high -500 ("if negative, offset from
# high-mel-freq" in its help; its code offsets from Nyquist, the same for banks that reach Nyquist).
# We take the help's reading: with banks to 7600 Hz the top piece then keeps 500 Hz for the banks
# it squeezes, where an offset from Nyquist would leave 100 Hz and triangles without an FFT bin.
VTLN_LOW_HZ, VTLN_HIGH_BELOW_TOP_HZ = 100.0, 500.0


def vtln_warp_freq(freq: np.ndarray, warp: float, low_hz: float, high_hz: float) -> np.ndarray:
    """Kaldi's `MelBanks::VtlnWarpFreq` for banks from `low_hz` to `high_hz`: frequencies between the
    VTLN cutoffs are divided by `warp`, and the two outer pieces are stretched linearly so that
    `low_hz` and `high_hz` stay in place."""
    freq = np.asarray(freq, dtype=np.float64)
    lo_cut = VTLN_LOW_HZ * max(1.0, warp)
    hi_cut = (high_hz - VTLN_HIGH_BELOW_TOP_HZ) * min(1.0, warp)
    scale = 1.0 / warp
    below = low_hz + (scale * lo_cut - low_hz) / (lo_cut - low_hz) * (freq - low_hz)
    above = high_hz + (scale * hi_cut - high_hz) / (hi_cut - high_hz) * (freq - high_hz)
    out = np.where(freq < lo_cut, below, np.where(freq < hi_cut, scale * freq, above))
    return np.where((freq < low_hz) | (freq > high_hz), freq, out)


def _mel_banks(config: FeatureConfig, high_hz: float | None = None, vtln_warp: float = 1.0) -> np.ndarray:
    """[num_mel_bins, fft/2] triangular weights, Kaldi's formula (20 Hz to `high_hz`, by default
    the config's top, equal mel spacing; each triangle's corners VTLN-warped by `vtln_warp`)."""
    _, _, n_fft = _window_sizes(config)
    top = config.mel_high_hz() if high_hz is None else high_hz
    low, high = _mel(20.0), _mel(top)
    delta = (high - low) / (config.num_mel_bins + 1)
    left = low + delta * np.arange(config.num_mel_bins)[:, None]
    center, right = left + delta, left + 2.0 * delta
    if vtln_warp != 1.0:
        left, center, right = (_mel(vtln_warp_freq(_inverse_mel(m), vtln_warp, 20.0, top))
                               for m in (left, center, right))
    mel = _mel(np.arange(n_fft // 2) * config.sample_rate / n_fft)[None, :]
    return np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))


def _fbank_numpy(samples: np.ndarray, config: FeatureConfig, vtln_warp: float = 1.0) -> np.ndarray:
    """The Kaldi fbank in NumPy, for mel banks kaldi-native-fbank refuses, as PaddleSpeech computes
    them (`paddlespeech.audio.compliance.kaldi.fbank`, its `fbank_kaldi` step, so what its
    DeepSpeech2 models were trained on): same settings as `_fbank_options` (snip_edges, DC removal,
    pre-emphasis 0.97, povey window, power spectrum, natural log), energies floored at 1e-7
    (PaddleSpeech's floor; Kaldi's is float32 epsilon). The empty bins are then exactly
    log(1e-7) in float32, bit for bit PaddleSpeech's value: those bins are constant, so their CMVN
    variance is ~0 and any other constant would be amplified by a huge inverse deviation."""
    win, hop, n_fft = _window_sizes(config)
    if samples.shape[0] < win:
        return np.zeros((0, config.num_mel_bins), dtype=np.float32)
    count = 1 + (samples.shape[0] - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(count)[:, None]
    frames = samples.astype(np.float64)[idx]
    frames -= frames.mean(axis=1, keepdims=True)
    # Pre-emphasis; Kaldi treats the sample before the first one as the first one itself.
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames *= (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / (win - 1))) ** 0.85  # povey
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    energies = power[:, : n_fft // 2] @ _mel_banks(config, vtln_warp=vtln_warp).T  # the Nyquist bin has no weight
    return np.log(np.maximum(energies, PADDLESPEECH_ENERGY_FLOOR)).astype(np.float32)


def mel_bank_map(config: FeatureConfig, high_hz: float) -> np.ndarray:
    """[bins, bins] non-negative weights M such that M @ (mel energies of a bank from 20 Hz to
    `high_hz`) approximates the config's mel energies: each of its triangles as the least-squares
    non-negative mix of the other bank's. It lets a model trained on our fbank read a fbank computed
    with another upper edge (sherpa-onnx's 7600 Hz, docs/onnx.md); bins above `high_hz` are
    extrapolated from the highest ones. The same edge gives the identity."""
    from scipy.optimize import nnls

    if abs(high_hz - config.mel_high_hz()) < 1e-3:
        return np.eye(config.num_mel_bins, dtype=np.float32)

    ours, theirs = _mel_banks(config), _mel_banks(config, high_hz)
    return np.stack([nnls(theirs.T, row)[0] for row in ours]).astype(np.float32)


class CmvnAccumulator:
    """Per-dimension sums and sums of squares in float64 over every frame of a data set."""

    def __init__(self, dim: int) -> None:
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)
        self.frames = 0

    def add(self, feats: np.ndarray) -> None:
        f = feats.astype(np.float64)
        self.sum += f.sum(axis=0)
        self.sumsq += (f * f).sum(axis=0)
        self.frames += f.shape[0]

    def to_json(self) -> str:
        """The JSON layout WeNet and PaddleSpeech both read: per-dimension sums, sums of squares, frame count."""
        return json.dumps(
            {"mean_stat": self.sum.tolist(), "var_stat": self.sumsq.tolist(), "frame_num": self.frames}
        )


VARIANCE_FLOOR = 1e-4


def load_cmvn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, istd) float32 from a WeNet/PaddleSpeech JSON CMVN file."""
    try:
        stats = json.loads(Path(path).read_text(encoding="utf-8"))
        sums = np.asarray(stats["mean_stat"], dtype=np.float64)
        sumsq = np.asarray(stats["var_stat"], dtype=np.float64)
        count = float(stats["frame_num"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise AsrError(
            f"cannot read CMVN statistics from {path} ({e}); expected JSON with mean_stat, var_stat, "
            "frame_num - re-run stage 0 to recompute it"
        ) from None
    if count <= 0 or sums.shape != sumsq.shape:
        raise AsrError(f"CMVN statistics in {path} are empty or inconsistent; re-run stage 0")
    mean = sums / count
    # WeNet and PaddleSpeech floor the variance at 1e-20. A bin that is constant (161-bin fbank has
    # mel triangles without an FFT bin) then gets istd ~1e10, and one float32 ulp of rounding in it
    # (time warp, resampling) reaches the network as ~1e4: DeepSpeech2 training diverged at the first
    # update. Real log-mel bins have variances of 1-20, far above this floor; a constant bin still
    # normalises to exactly 0.
    var = np.maximum(sumsq / count - mean * mean, VARIANCE_FLOOR)
    return mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32)
