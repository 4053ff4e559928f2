"""Fbank and CMVN against reference values measured with PaddleSpeech/WeNet (docs/fbank_cmvn.md)."""

import json

import numpy as np
import pytest

from paddle_asr.config import FeatureConfig
from paddle_asr.data.audio import read_audio
from paddle_asr.errors import AsrError
from paddle_asr.features import CmvnAccumulator, compute_fbank, load_cmvn, num_frames
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
