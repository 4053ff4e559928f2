"""Fbank and CMVN against reference values measured with PaddleSpeech/WeNet (docs/fbank_cmvn.md)."""

import json

import kaldi_native_fbank as knf
import numpy as np
import pytest

from paddle_asr.config import AsrConfig, FeatureConfig, check_config
from paddle_asr.data.audio import read_audio
from paddle_asr.errors import AsrError
from paddle_asr.features import CmvnAccumulator, _fbank_numpy, compute_fbank, load_cmvn, mel_bank_map, num_frames
from tests.conftest import real_fixture


def test_fbank_matches_reference_on_real_aishell_utterance():
    waveform, rate = read_audio(real_fixture("aishell-BAC009S0724W0121.wav"))
    assert rate == 16000 and waveform.shape == (68496,)
    assert waveform[:5].tolist() == [58, 44, -4, 68, 43]  # int16 scale, as Kaldi expects
    feats = compute_fbank(waveform, FeatureConfig())
    assert feats.shape == (426, 80) == (num_frames(68496, FeatureConfig()), 80)
    assert feats.mean() == pytest.approx(12.2461, abs=1e-3)
    np.testing.assert_allclose(feats[0, :5], [8.4848, 6.7475, 6.6990, 6.2193, 6.5538], atol=2e-3)
    np.testing.assert_allclose(feats[100, :5], [11.4324, 11.1642, 9.5883, 11.8986, 14.9610], atol=2e-3)


@pytest.mark.parametrize("high_freq", [-400.0, 7000.0])
def test_high_freq_moves_the_top_of_the_mel_banks_as_kaldi_reads_it(high_freq):
    """<= 0 is an offset from Nyquist, > 0 Hz; kaldi-native-fbank's own option gives the same
    fbank, and so does the NumPy fbank (its floor aside)."""
    waveform, _ = read_audio(real_fixture("aishell-BAC009S0724W0121.wav"))
    conf = FeatureConfig(high_freq=high_freq)
    ours = compute_fbank(waveform, conf)
    opts = knf.FbankOptions()
    opts.frame_opts.dither, opts.mel_opts.num_bins, opts.mel_opts.high_freq = 0.0, 80, high_freq
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000.0, waveform.astype(np.float32))
    fbank.input_finished()
    theirs = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_allclose(_fbank_numpy(waveform.astype(np.float32), conf), ours, atol=2e-3)
    assert not np.allclose(ours, compute_fbank(waveform, FeatureConfig()), atol=0.1)
    assert conf.mel_high_hz() == (7600.0 if high_freq < 0 else 7000.0)
    np.testing.assert_array_equal(mel_bank_map(conf, conf.mel_high_hz()), np.eye(80, dtype=np.float32))


@pytest.mark.parametrize("high_freq", [8001.0, -7990.0, -8000.0])
def test_a_mel_top_outside_20_hz_to_nyquist_is_a_config_error(high_freq):
    config = AsrConfig(features=FeatureConfig(high_freq=high_freq))
    with pytest.raises(AsrError, match="features.high_freq: .* at most Nyquist \\(8000 Hz\\): e.g. 0"):
        check_config(config, "conf/x.yaml")


def test_dither_is_reproducible_with_a_seeded_generator_and_off_by_default():
    waveform, _ = read_audio(real_fixture("aishell-BAC009S0724W0121.wav"))
    conf = FeatureConfig()
    a = compute_fbank(waveform, conf, dither=1.0, rng=np.random.default_rng(3))
    b = compute_fbank(waveform, conf, dither=1.0, rng=np.random.default_rng(3))
    clean = compute_fbank(waveform, conf)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, clean)


def test_real_wenet_cmvn_file_gives_reference_statistics():
    mean, istd = load_cmvn(real_fixture("global_cmvn"))
    np.testing.assert_allclose(mean[:5], [9.872, 9.939, 10.238, 10.860, 11.687], atol=2e-3)
    np.testing.assert_allclose(1 / istd[:5], [1.633, 2.012, 2.991, 3.174, 3.374], atol=2e-3)


def test_cmvn_accumulator_round_trips_through_the_json_format(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 2, (50, 80)), rng.normal(5, 2, (30, 80))
    acc = CmvnAccumulator(80)
    acc.add(a)
    acc.add(b)
    path = tmp_path / "global_cmvn"
    path.write_text(acc.to_json())
    stats = json.loads(path.read_text())
    assert stats["frame_num"] == 80 and len(stats["mean_stat"]) == 80
    mean, istd = load_cmvn(path)
    both = np.concatenate([a, b])
    np.testing.assert_allclose(mean, both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(istd, 1 / both.std(0), rtol=1e-4)


def test_broken_cmvn_file_names_the_file(tmp_path):
    path = tmp_path / "global_cmvn"
    path.write_text('{"mean_stat": [1.0]}')
    with pytest.raises(AsrError, match=str(path)):
        load_cmvn(path)
