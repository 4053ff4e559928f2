"""Speed perturbation and SpecAugment on a real AISHELL utterance (WeNet's defaults; docs/training.md)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch

from paddle_asr.config import FeatureConfig, SpecAugmentConfig, SpeedPerturbConfig
from paddle_asr.data.audio import read_audio
from paddle_asr.data.augment import choose_speed, spec_augment, speed_perturb, time_warp
from paddle_asr.features import compute_fbank, num_frames
from tests.conftest import real_fixture

SPEEDS = [0.9, 1.0, 1.1]


@pytest.fixture(scope="module")
def audio() -> tuple[np.ndarray, int]:
    waveform, rate = read_audio(real_fixture("aishell-BAC009S0724W0121.wav"))
    assert rate == 16000 and waveform.shape == (68496,)  # 4.281 s
    return waveform, rate


@pytest.fixture(scope="module")
def fbank(audio: tuple[np.ndarray, int]) -> np.ndarray:
    feats = compute_fbank(audio[0], FeatureConfig())
    assert feats.shape == (426, 80)
    assert np.all(feats != 0.0)  # so that zeros below can only come from masks
    return feats


@pytest.fixture(scope="module")
def perturbed(audio: tuple[np.ndarray, int]) -> dict[float, np.ndarray]:
    waveform, rate = audio
    return {s: speed_perturb(waveform, rate, s) for s in SPEEDS}


# ---------------------------------------------------------------- speed perturbation


def _median_f0(x: np.ndarray, rate: int) -> float:
    """Median autocorrelation pitch of the loudest 30% of 40 ms frames (voiced speech)."""
    frame, hop = 640, 160
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), frame)[::hop]
    energy = (frames**2).mean(axis=1)
    frames = frames[energy > np.percentile(energy, 70)]
    frames = frames - frames.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame, axis=1)) ** 2, axis=1)[:, :frame]
    lo, hi = rate // 400, rate // 70  # 70-400 Hz
    lags = lo + np.argmax(ac[:, lo:hi], axis=1)
    return float(np.median(rate / lags))


def _spectral_centroid(x: np.ndarray, rate: int) -> float:
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 400)[::160] * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(400, 1.0 / rate)
    energy = power.sum(axis=1)
    loud = energy > np.median(energy)
    return float((power[loud] @ freqs / energy[loud]).mean())


def _best_spectral_scale(x: np.ndarray, y: np.ndarray, rate: int) -> float:
    """The factor a for which y's long-term spectrum at f best matches x's at f / a (80 Hz-4 kHz)."""
    freqs, px = welch(x, rate, nperseg=4096)
    _, py = welch(y, rate, nperseg=4096)
    band = (freqs >= 80) & (freqs <= 4000)
    log_py = np.log(py[band] + 1e-9)
    grid = np.arange(0.8, 1.2001, 0.005)
    scores = [np.corrcoef(log_py, np.log(np.interp(freqs[band] / a, freqs, px) + 1e-9))[0, 1] for a in grid]
    return float(grid[int(np.argmax(scores))])


def _loud_span(x: np.ndarray, below_peak_db: float = 20.0) -> tuple[int, int]:
    """First and last 10 ms frame whose energy is within `below_peak_db` of the loudest frame."""
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 400)[::160]
    db = 10.0 * np.log10((frames**2).mean(axis=1) + 1.0)
    loud = np.flatnonzero(db > db.max() - below_peak_db)
    return int(loud[0]), int(loud[-1])


@pytest.mark.parametrize("speed", SPEEDS)
def test_speed_perturb_length_and_fbank_frames(audio, perturbed, speed: float) -> None:
    waveform, _ = audio
    out = perturbed[speed]
    assert out.ndim == 1 and out.dtype == np.float32
    assert abs(len(out) - round(len(waveform) / speed)) <= 1
    feats = compute_fbank(out, FeatureConfig())
    assert feats.shape == (num_frames(len(out), FeatureConfig()), 80)
    assert abs(feats.shape[0] - round(426 / speed)) <= 1  # 474 / 426 / 387 frames
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 2 * np.abs(waveform).max()


def test_speed_one_returns_the_input_unchanged(audio) -> None:
    waveform, rate = audio
    out = speed_perturb(waveform, rate, 1.0)
    np.testing.assert_array_equal(out, waveform)


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_perturb_shifts_pitch_and_spectrum_by_the_factor(audio, perturbed, speed: float) -> None:
    waveform, rate = audio
    out = perturbed[speed]
    # Pitch and tempo change together (sox speed + rate): F0 and the whole spectrum scale by `speed`.
    assert _median_f0(out, rate) / _median_f0(waveform, rate) == pytest.approx(speed, abs=0.02)
    assert _best_spectral_scale(waveform, out, rate) == pytest.approx(speed, abs=0.011)
    ratio = _spectral_centroid(out, rate) / _spectral_centroid(waveform, rate)
    assert (ratio < 0.97) if speed < 1 else (ratio > 1.03)


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_perturb_scales_speech_onset_and_offset_times(audio, perturbed, speed: float) -> None:
    waveform, _ = audio
    first, last = _loud_span(waveform)
    first_p, last_p = _loud_span(perturbed[speed])
    assert (first, last) == (48, 350)
    assert abs(first_p - first / speed) <= 2
    assert abs(last_p - last / speed) <= 2


@pytest.mark.parametrize("speed", [0.0, -1.0, 0.001, float("nan"), float("inf")])
def test_speed_perturb_rejects_non_positive_or_non_finite_speed(audio, speed: float) -> None:
    waveform, rate = audio
    with pytest.raises(ValueError, match="speed"):
        speed_perturb(waveform, rate, speed)


def test_choose_speed_draws_only_configured_values_and_covers_them() -> None:
    conf = SpeedPerturbConfig(enabled=True)
    rng = np.random.default_rng(0)
    draws = [choose_speed(conf, rng) for _ in range(600)]
    assert set(draws) == set(SPEEDS)
    counts = np.array([draws.count(s) for s in SPEEDS])
    assert counts.min() > 150  # uniform: 200 each expected
    custom = SpeedPerturbConfig(enabled=True, speeds=[0.95, 1.05])
    assert {choose_speed(custom, rng) for _ in range(100)} == {0.95, 1.05}


def test_choose_speed_disabled_is_one_and_draws_nothing() -> None:
    rng = np.random.default_rng(5)
    assert choose_speed(SpeedPerturbConfig(enabled=False), rng) == 1.0
    assert rng.integers(0, 1 << 30) == np.random.default_rng(5).integers(0, 1 << 30)


def test_choose_speed_rejects_empty_speed_list() -> None:
    with pytest.raises(ValueError, match="speeds"):
        choose_speed(SpeedPerturbConfig(enabled=True, speeds=[]), np.random.default_rng(0))


# ---------------------------------------------------------------- SpecAugment masks


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, width) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]


def test_masks_follow_the_configured_counts_and_widths(fbank) -> None:
    conf = SpecAugmentConfig(num_t_mask=2, max_t=50, num_f_mask=2, max_f=10)
    frames, bins = fbank.shape
    seen_separate_t = seen_separate_f = 0
    for seed in range(200):
        out = spec_augment(fbank, conf, np.random.default_rng(seed))
        assert out.shape == fbank.shape and out.dtype == fbank.dtype
        zero = out == 0.0
        t_rows, f_cols = zero.all(axis=1), zero.all(axis=0)
        for runs, num, widest, size in ((_runs(t_rows), 2, 50, frames), (_runs(f_cols), 2, 10, bins)):
            assert 1 <= len(runs) <= num  # overlapping masks merge into one run
            assert sum(w for _, w in runs) <= num * widest
            assert all(0 <= s and s + w <= size for s, w in runs)  # clipped at the end
            if len(runs) == num:  # separate masks: each width in [1, max]
                assert all(1 <= w <= widest for _, w in runs)
        seen_separate_t += len(_runs(t_rows)) == 2
        seen_separate_f += len(_runs(f_cols)) == 2
        # Every zero is in a masked row or column; every other cell is the original value.
        keep = ~(t_rows[:, None] | f_cols[None, :])
        assert not zero[keep].any()
        np.testing.assert_array_equal(out[keep], fbank[keep])
    assert seen_separate_t > 100 and seen_separate_f > 100


def test_masks_match_replayed_draws(fbank) -> None:
    conf = SpecAugmentConfig()  # WeNet defaults, max_w = 0
    for seed in range(20):
        out = spec_augment(fbank, conf, np.random.default_rng(seed))
        # Replay the draws (the masks' draw order from before time warp existed, which callers
        # rely on): time masks first, then frequency masks.
        rng = np.random.default_rng(seed)
        expected_rows, expected_cols = np.zeros(426, bool), np.zeros(80, bool)
        for _ in range(2):
            s, w = int(rng.integers(0, 426)), int(rng.integers(1, 51))
            expected_rows[s : s + w] = True
        for _ in range(2):
            s, w = int(rng.integers(0, 80)), int(rng.integers(1, 11))
            expected_cols[s : s + w] = True
        np.testing.assert_array_equal((out == 0).all(axis=1), expected_rows)
        np.testing.assert_array_equal((out == 0).all(axis=0), expected_cols)


def test_spec_augment_leaves_input_untouched_and_is_reproducible(fbank) -> None:
    before = fbank.copy()
    for conf in (SpecAugmentConfig(), SpecAugmentConfig(max_w=5), SpecAugmentConfig(max_w=40)):
        a = spec_augment(fbank, conf, np.random.default_rng(7))
        b = spec_augment(fbank, conf, np.random.default_rng(7))
        c = spec_augment(fbank, conf, np.random.default_rng(8))
        np.testing.assert_array_equal(fbank, before)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert a.shape == fbank.shape and a.dtype == fbank.dtype


def test_disabled_spec_augment_returns_identical_values(fbank) -> None:
    rng = np.random.default_rng(1)
    out = spec_augment(fbank, SpecAugmentConfig(enabled=False, max_w=5), rng)
    np.testing.assert_array_equal(out, fbank)
    assert rng.integers(0, 1 << 30) == np.random.default_rng(1).integers(0, 1 << 30)  # nothing drawn


# ---------------------------------------------------------------- time warp


@pytest.mark.parametrize("max_w", [5, 40])
def test_time_warp_moves_the_centre_frame_and_keeps_the_ends(fbank, max_w: int) -> None:
    neighbour = np.abs(np.diff(fbank, axis=0)).mean()  # typical change between adjacent frames
    changed = 0
    for seed in range(20):
        out = time_warp(fbank, max_w, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # replay PaddleSpeech's draws
        centre = int(rng.integers(max_w, 426 - max_w))
        warped = int(rng.integers(centre - max_w, centre + max_w)) + 1
        assert max_w <= centre < 426 - max_w and centre - max_w < warped <= centre + max_w
        assert out.shape == fbank.shape and out.dtype == fbank.dtype
        # Both sides are resized, not cut: their end frames land on the ends and the new boundary.
        np.testing.assert_array_equal(out[0], fbank[0])
        np.testing.assert_array_equal(out[-1], fbank[-1])
        np.testing.assert_allclose(out[warped - 1], fbank[centre - 1], rtol=1e-6)
        np.testing.assert_allclose(out[warped], fbank[centre], rtol=1e-6)
        # A side of 100+ frames stretched by at most 5 moves its outer frames by < 0.15 frame.
        if max_w == 5 and centre >= 100:
            assert np.abs(out[:3] - fbank[:3]).mean() < 0.25 * neighbour
        if max_w == 5 and 426 - centre >= 100:
            assert np.abs(out[-3:] - fbank[-3:]).mean() < 0.25 * neighbour
        if warped == centre:
            np.testing.assert_allclose(out, fbank, rtol=1e-6)
        else:
            changed += 1
            middle = slice(min(centre, warped) - 3, max(centre, warped) + 3)
            assert np.abs(out[middle] - fbank[middle]).mean() > 0.3 * neighbour
    assert changed >= 15


def test_spec_augment_time_warp_before_masks_with_paddlespeech_window(fbank) -> None:
    conf = SpecAugmentConfig(max_w=5)  # PaddleSpeech max_time_warp 5
    out = spec_augment(fbank, conf, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    expected = spec_augment(time_warp(fbank, 5, rng), SpecAugmentConfig(), rng)  # the warp, then the masks
    np.testing.assert_array_equal(out, expected)
    no_masks = SpecAugmentConfig(num_t_mask=0, num_f_mask=0, max_w=5)
    warped = spec_augment(fbank, no_masks, np.random.default_rng(3))
    assert not np.any(warped == 0.0) and not np.array_equal(warped, fbank)


@pytest.mark.parametrize("frames", [1, 5, 10])
def test_time_warp_skips_utterances_of_at_most_twice_the_window(fbank, frames: int) -> None:
    short = fbank[:frames]
    rng = np.random.default_rng(0)
    no_masks = SpecAugmentConfig(num_t_mask=0, num_f_mask=0, max_w=5)
    np.testing.assert_array_equal(spec_augment(short, no_masks, rng), short)
    np.testing.assert_array_equal(time_warp(short, 5, rng), short)
    assert rng.integers(0, 1 << 30) == np.random.default_rng(0).integers(0, 1 << 30)  # nothing drawn
    assert time_warp(fbank[:11], 5, np.random.default_rng(0)).shape == (11, 80)  # 11 > 10: warps


def test_mean_fill_puts_each_bins_own_mean_in_the_masks(fbank) -> None:
    """DeepSpeech2's 161-bin fbank has constant bins; a zero there would be ~1e11 after CMVN."""
    conf = SpecAugmentConfig(fill="mean")
    out = spec_augment(fbank, conf, np.random.default_rng(5))
    zero = spec_augment(fbank, SpecAugmentConfig(), np.random.default_rng(5))
    masked = zero == 0.0
    assert masked.any()
    means = np.broadcast_to(fbank.mean(axis=0), fbank.shape)
    np.testing.assert_allclose(out[masked], means[masked], rtol=1e-6)
    np.testing.assert_array_equal(out[~masked], fbank[~masked])


# ---------------------------------------------------------------- voice perturbation (VTLP + envelope)


@pytest.mark.parametrize("high_freq", [0.0, -400.0])
@pytest.mark.parametrize("warp", [0.8, 0.9, 1.0, 1.1, 1.25])
def test_vtln_warped_mel_banks_are_kaldis(high_freq: float, warp: float) -> None:
    import kaldi_native_fbank as knf

    from paddle_asr.features import _fbank_options, _mel_banks

    config = FeatureConfig(high_freq=high_freq)
    opts = _fbank_options(config)
    opts.mel_opts.vtln_high = config.mel_high_hz() - 500.0  # Kaldi's -500, read from the top bank
    kaldi = np.asarray(knf.MelBanks(opts.mel_opts, opts.frame_opts, warp).get_matrix())
    ours = _mel_banks(config, vtln_warp=warp)
    assert kaldi.shape[0] == ours.shape[0] == 80
    # Kaldi computes the corners in float32, we in float64: weights (at most 1) agree to 1e-4.
    np.testing.assert_allclose(ours, kaldi[:, : ours.shape[1]], rtol=0, atol=1e-4)


@pytest.mark.parametrize("high_freq", [0.0, -400.0])
def test_every_mel_triangle_keeps_an_fft_bin_over_the_allowed_warps(high_freq: float) -> None:
    from paddle_asr.features import _mel_banks

    for warp in np.linspace(0.7, 1.4, 29):  # VoicePerturbConfig's bounds
        assert (_mel_banks(FeatureConfig(high_freq=high_freq), vtln_warp=warp).sum(axis=1) > 0).all(), warp


def test_vtln_warp_one_is_the_plain_fbank_and_other_warps_move_a_tone(audio) -> None:
    config = FeatureConfig()
    plain = compute_fbank(audio[0], config)
    np.testing.assert_array_equal(compute_fbank(audio[0], config, vtln_warp=1.0), plain)
    warped = compute_fbank(audio[0], config, vtln_warp=1.1)
    assert warped.shape == plain.shape and np.abs(warped - plain).mean() > 0.1
    t = np.arange(16000) / 16000.0
    for warp in (0.85, 1.15):
        tone_at = 1000.0
        # With warp a, the bank that Kaldi centres on f reads the energy at f / a, so a tone at f
        # peaks where an unwarped fbank puts a tone at a * f.
        peak = compute_fbank(8000 * np.sin(2 * np.pi * tone_at * t), config, vtln_warp=warp).mean(0).argmax()
        expected = compute_fbank(8000 * np.sin(2 * np.pi * warp * tone_at * t), config).mean(0).argmax()
        assert abs(int(peak) - int(expected)) <= 1 and abs(int(peak) - int(compute_fbank(
            8000 * np.sin(2 * np.pi * tone_at * t), config).mean(0).argmax())) >= 3


def test_choose_voice_draws_within_its_bounds_and_nothing_when_off() -> None:
    from paddle_asr.config import VoicePerturbConfig
    from paddle_asr.data.augment import choose_voice

    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    warp, envelope = choose_voice(VoicePerturbConfig(), 80, rng)
    assert warp == 1.0 and not envelope.any() and rng.bit_generator.state == state
    conf = VoicePerturbConfig(enabled=True, min_warp=0.85, max_warp=1.2, envelope_db=8.0)
    draws = [choose_voice(conf, 80, np.random.default_rng(s)) for s in range(200)]
    warps = np.array([w for w, _ in draws])
    peaks_db = np.array([np.abs(e).max() for _, e in draws]) * 10.0 / np.log(10.0)
    assert 0.85 <= warps.min() < 0.87 and 1.18 < warps.max() <= 1.2
    assert peaks_db.max() <= 8.0 + 1e-4 and peaks_db.max() > 7.0 and peaks_db.min() < 1.0
    # Smooth: neighbouring bins differ by a small part of the peak (4 cosines over 80 bins).
    steps = np.array([np.abs(np.diff(e)).max() / max(np.abs(e).max(), 1e-9) for _, e in draws])
    assert steps.max() < 0.4
    again = choose_voice(conf, 80, np.random.default_rng(7))
    assert again[0] == draws[7][0] and np.array_equal(again[1], draws[7][1])


def test_high_cut_attenuates_only_the_bins_above_a_random_cutoff() -> None:
    from paddle_asr.config import VoicePerturbConfig
    from paddle_asr.data.augment import choose_voice

    conf = VoicePerturbConfig(enabled=True, min_warp=1.0, max_warp=1.0, high_cut_db=25.0)
    cuts_db = np.array([choose_voice(conf, 80, np.random.default_rng(s))[1] for s in range(300)]) * 10.0 / np.log(10.0)
    depth = -cuts_db[:, -1]
    assert (cuts_db <= 1e-6).all() and (np.diff(cuts_db, axis=1) <= 1e-6).all()  # a cut, deeper upwards
    assert depth.max() <= 25.0 + 1e-4 and depth.max() > 23.0 and depth.min() < 2.0
    assert (np.abs(cuts_db[:, :25]) <= 0.01 * depth[:, None] + 1e-6).all()  # the low bins keep their energy
    # Half the depth is reached between 45 and 80 % of the bins, everywhere in that range.
    deep = depth > 5.0
    half = (cuts_db[deep] > -0.5 * depth[deep, None]).sum(axis=1)
    assert 0.45 * 79 - 1 <= half.min() <= 0.45 * 79 + 3 and 0.8 * 79 - 3 <= half.max() <= 0.8 * 79 + 1
    # With the envelope too, the envelope's own draws come first and stay what they were.
    both = VoicePerturbConfig(enabled=True, min_warp=0.9, max_warp=1.1, envelope_db=8.0, high_cut_db=25.0)
    alone = VoicePerturbConfig(enabled=True, min_warp=0.9, max_warp=1.1, envelope_db=8.0)
    for seed in range(20):
        w1, e1 = choose_voice(both, 80, np.random.default_rng(seed))
        w2, e2 = choose_voice(alone, 80, np.random.default_rng(seed))
        assert w1 == w2 and (e1 <= e2 + 1e-6).all() and np.allclose(e1[:25], e2[:25], atol=0.25 * np.log(10.0) / 10.0)


def test_training_features_with_voice_perturbation(audio) -> None:
    from paddle_asr.config import VoicePerturbConfig
    from paddle_asr.data.loader import TrainingInputs, utterance_features, utterance_rng
    from paddle_asr.data.tokenizer import CharTokenizer

    waveform, rate = audio
    spec = SpecAugmentConfig(enabled=False)
    tok = CharTokenizer(["<blank>", "<unk>", "<eos>"])
    off = TrainingInputs(tok, FeatureConfig(), spec, SpeedPerturbConfig(), seed=3)
    # Off: exactly the features training computed before voice perturbation existed.
    rng = utterance_rng(3, 0, "u1")
    expected = compute_fbank(waveform, FeatureConfig(), dither=0.1, rng=rng)
    np.testing.assert_array_equal(utterance_features(waveform, rate, "u1", 0, off), expected)
    conf = VoicePerturbConfig(enabled=True, min_warp=0.85, max_warp=1.2, envelope_db=8.0)
    on = TrainingInputs(tok, FeatureConfig(), spec, SpeedPerturbConfig(), seed=3, voice_perturb=conf)
    first = utterance_features(waveform, rate, "u1", 0, on)
    np.testing.assert_array_equal(utterance_features(waveform, rate, "u1", 0, on), first)  # seeded per utterance
    assert first.shape == expected.shape and np.abs(first - expected).mean() > 0.1
    assert np.abs(utterance_features(waveform, rate, "u1", 1, on) - first).mean() > 0.1  # new draw each epoch
