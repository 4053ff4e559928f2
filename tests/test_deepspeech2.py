"""DeepSpeech2: parity with PaddleSpeech 1.5.0's DeepSpeech2Model on golden outputs it produced
(tools/make_paddlespeech_ds2_golden.py), streaming, the GRU option, sizes, config and import.

The fixtures are PaddleSpeech asr0 folders with small fixed random weights (161-dim fbank, 2 RNN
layers of 8), run by PaddleSpeech on the real AISHELL utterance BAC009S0724W0121 and its first 300
frames in one padded batch. PaddleSpeech got CMVN-normalised features (its data pipeline); our
model gets the raw fbank and applies the same data/mean_std.json inside (encoder.global_cmvn).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import paddle
import pytest
import soundfile

from paddle_asr.config import AsrConfig, FeatureConfig, load_config
from paddle_asr.errors import AsrError
from paddle_asr.features import compute_fbank, load_cmvn
from paddle_asr.import_paddlespeech import import_paddlespeech
from paddle_asr.models.deepspeech2 import DeepSpeech2Model
from paddle_asr.models.registry import build_model, load_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "paddlespeech"
WAV = Path(__file__).resolve().parent / "fixtures" / "aishell-BAC009S0724W0121.wav"
MODELS = ("deepspeech2", "deepspeech2_online", "deepspeech2_online_gru")
ONLINE = ("deepspeech2_online", "deepspeech2_online_gru")
ATOL = 1e-4
CMVN_KEYS = {"encoder.global_cmvn.mean", "encoder.global_cmvn.istd"}


@cache
def golden(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / name / "golden.json").read_text(encoding="utf-8"))
    return meta, dict(np.load(FIXTURES / name / "golden.npz"))


@cache
def raw_feats() -> np.ndarray:
    samples, _ = soundfile.read(str(WAV), dtype="int16")
    return compute_fbank(samples, FeatureConfig(num_mel_bins=161))


def raw_batch() -> tuple[np.ndarray, np.ndarray]:
    """The golden batch before CMVN: the utterance and its first 300 frames, zero-padded."""
    feats = raw_feats()
    short = golden(MODELS[0])[0]["batch"]["input_lengths"][1]
    batch = np.zeros((2,) + feats.shape, np.float32)
    batch[0], batch[1, :short] = feats, feats[:short]
    return batch, np.array([feats.shape[0], short], np.int64)


def ps_checkpoint(name: str) -> dict:
    return paddle.load(str(FIXTURES / name / "exp" / name / "checkpoints" / "avg_1.pdparams"))


@cache
def model(name: str) -> DeepSpeech2Model:
    """Our model with PaddleSpeech's weights loaded by name and its mean_std.json as CMVN."""
    spec = golden(name)[0]["model"]
    m = DeepSpeech2Model(spec["feat_size"], golden(name)[0]["vocab_size"], num_rnn_layers=spec["num_rnn_layers"],
                         rnn_size=spec["rnn_layer_size"], rnn_direction=spec["rnn_direction"], use_gru=spec["use_gru"],
                         cmvn=load_cmvn(FIXTURES / name / "data" / "mean_std.json"))
    missing, unexpected = m.set_state_dict(ps_checkpoint(name))
    assert set(missing) <= CMVN_KEYS and not unexpected
    m.eval()
    return m


def test_fbank161_is_the_golden_input():
    ref = np.load(FIXTURES / "input_fbank161.npz")
    feats = raw_feats()
    assert feats.shape == (426, 161)
    np.testing.assert_allclose(feats[:32], ref["feats_head"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(feats.mean(0), ref["feats_mean"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(feats.std(0), ref["feats_std"], atol=1e-4, rtol=0)


def test_numpy_fbank_is_kaldis_where_kaldi_accepts_the_bins():
    """161 bins take the NumPy path (Kaldi refuses mel triangles without an FFT bin); at 80 bins it
    must agree with kaldi-native-fbank, and the empty 161-bin triangles hold PaddleSpeech's floor."""
    from paddle_asr.features import _fbank_numpy

    samples, _ = soundfile.read(str(WAV), dtype="int16")
    config = FeatureConfig(num_mel_bins=80)
    np.testing.assert_allclose(_fbank_numpy(samples.astype(np.float32), config), compute_fbank(samples, config),
                               atol=5e-4, rtol=0)
    feats = raw_feats()
    constant = np.flatnonzero((feats == feats[0]).all(axis=0))
    assert constant.tolist() == [4, 9, 16]
    assert (feats[:, constant] == np.float32(np.log(1e-7))).all()  # bit for bit PaddleSpeech's log(1e-7)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_has_paddlespeech_names_and_shapes(name):
    ps = ps_checkpoint(name)
    ours = model(name).state_dict()
    assert set(ours) - set(ps) == CMVN_KEYS  # everything else both ways, aliases included
    assert set(ps) <= set(ours)
    for key, value in ps.items():
        assert list(ours[key].shape) == list(value.shape), key
    # Paddle registers each RNN tensor twice; both names must hold the loaded values.
    alias = "encoder.rnn.0.0.cell_fw.weight_ih" if name == "deepspeech2" else "encoder.rnn.0.0.cell.weight_ih"
    np.testing.assert_array_equal(ours[alias].numpy(), ps["encoder.rnn.0.weight_ih_l0"].numpy())
    np.testing.assert_array_equal(ours["encoder.rnn.0.weight_ih_l0"].numpy(), ps["encoder.rnn.0.weight_ih_l0"].numpy())
    assert golden(name)[0]["model"]["num_state_dict_entries"] == len(ps)


@pytest.mark.parametrize("name", MODELS)
def test_encoder_ctc_and_final_states_match(name):
    _, g = golden(name)
    feats, lengths = raw_batch()
    m = model(name)
    with paddle.no_grad():
        enc, enc_lengths, log_probs = m.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths))
        _, _, h, c = m.encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths))
    np.testing.assert_array_equal(enc_lengths.numpy(), g["encoder_lengths"])
    # Padded frames included: both models see zeros there after CMVN.
    np.testing.assert_allclose(enc.numpy(), g["encoder_out"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(log_probs.numpy(), g["ctc_log_probs"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(h.numpy(), g["final_h"], atol=ATOL, rtol=0)
    if "final_c" in g:
        np.testing.assert_allclose(c.numpy(), g["final_c"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_loss_and_gradients_match(name):
    meta, g = golden(name)
    feats, lengths = raw_batch()
    m = model(name)
    m.train()
    try:
        loss, parts = m(paddle.to_tensor(feats), paddle.to_tensor(lengths), paddle.to_tensor(g["labels"]),
                        paddle.to_tensor(g["label_lengths"]))
        loss.backward()
        # 1e-4 relative: the loss is a float32 sum over ~180 frames of two utterances
        assert abs(float(loss) - meta["loss"]["batch"]) <= ATOL * max(1.0, abs(meta["loss"]["batch"]))
        assert float(parts["ctc"]) == float(loss)
        params = dict(m.named_parameters())
        for pname in meta["loss"]["gradients"]:
            want = g["grad." + pname]
            got = params[pname].grad.numpy()
            np.testing.assert_allclose(got, want, atol=ATOL * max(1.0, float(np.abs(want).max())), rtol=0)
    finally:
        m.clear_gradients()
        m.eval()


@pytest.mark.parametrize("name", ONLINE)
@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_chunk_steps_match_paddlespeech_chunk_by_chunk(name, chunk):
    """The chunk loop of PaddleSpeech's forward_chunk_by_chunk (window (n-1)*4+7, stride 4n, input
    zero-padded to whole windows), run with our forward_chunk on one utterance at a time."""
    _, g = golden(name)
    m = model(name)
    size, stride = m.chunk_window(chunk)
    assert (size, stride) == ((chunk - 1) * 4 + 7, 4 * chunk)
    feats, lengths = raw_batch()
    for b in range(2):
        x = feats[b:b + 1, :lengths[b]]
        t = x.shape[1]
        pad = (stride - (t - size) % stride) % stride
        x = np.concatenate([x, np.zeros((1, pad, x.shape[2]), np.float32)], axis=1)
        h, c = (paddle.to_tensor(s) for s in m.initial_states(1))
        outs, chunk_lengths = [], []
        with paddle.no_grad():
            for start in range(0, t + pad - size + 1, stride):
                n = paddle.to_tensor([min(t - start, size)], dtype="int64")
                lp, out_len, h, c = m.forward_chunk(paddle.to_tensor(x[:, start:start + size]), n, h, c)
                chunk_lengths.append(int(out_len[0]))
                outs.append(lp.numpy()[0, :chunk_lengths[-1]])
        tag = f"chunk{chunk}_utt{b}"
        assert chunk_lengths == g[f"{tag}_lengths"].tolist()
        np.testing.assert_allclose(np.concatenate(outs), g[f"{tag}_ctc_log_probs"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(h.numpy(), g[f"{tag}_final_h"], atol=ATOL, rtol=0)
        if f"{tag}_final_c" in g:
            np.testing.assert_allclose(c.numpy(), g[f"{tag}_final_c"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ONLINE)
def test_chunk_by_chunk_equals_the_full_utterance(name):
    feats, lengths = raw_batch()
    m = model(name)
    with paddle.no_grad():
        _, full_lengths, full = m.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths))
        for chunk in (1, 4, 16):
            chunked, chunked_lengths = m.forward_chunk_by_chunk(
                paddle.to_tensor(feats), paddle.to_tensor(lengths), chunk
            )
            np.testing.assert_array_equal(chunked_lengths.numpy(), full_lengths.numpy())
            for b, n in enumerate(full_lengths.numpy()):
                np.testing.assert_allclose(chunked.numpy()[b, :n], full.numpy()[b, :n], atol=1e-5, rtol=0)


def test_the_offline_model_refuses_chunks():
    m = model("deepspeech2")
    assert not m.encoder.supports_streaming and model("deepspeech2_online").encoder.supports_streaming
    h, c = (paddle.to_tensor(s) for s in m.initial_states(1))
    with pytest.raises(AsrError, match="rnn_direction: forward"):
        m.forward_chunk(paddle.zeros([1, 7, 161]), paddle.to_tensor([7], dtype="int64"), h, c)


def test_output_length_is_paddlespeechs():
    m = model("deepspeech2")
    for t in range(3, 200):
        assert m.encoder.output_length(t) == ((t - 1) // 2 - 1) // 2


@pytest.mark.parametrize("direction, expected, entries", [("bidirect", 128_100_873, 98), ("forward", 47_300_105, 58)])
def test_published_size_has_paddlespeechs_parameter_count(direction, expected, entries):
    """PaddleSpeech asr0 AISHELL deepspeech2.yaml: 5 x LSTM 1024, 161-dim fbank, 4233 units."""
    m = DeepSpeech2Model(161, 4233, num_rnn_layers=5, rnn_size=1024, rnn_direction=direction)
    assert sum(int(np.prod(p.shape)) for p in m.parameters()) == expected
    state = m.state_dict()
    assert len(state) == entries
    width = 2048 if direction == "bidirect" else 1024
    assert list(state["encoder.rnn.0.weight_ih_l0"].shape) == [4096, 1248]
    assert list(state["encoder.rnn.1.weight_ih_l0"].shape) == [4096, width]
    assert list(state["encoder.layernorm_list.4.weight"].shape) == [width]
    assert list(state["decoder.ctc_lo.weight"].shape) == [width, 4233]
    assert list(state["encoder.conv.out.0.weight"].shape) == [1248, 32]


@pytest.mark.parametrize("direction", ["bidirect", "forward"])
def test_gru_variant_builds_trains_and_streams(direction):
    paddle.seed(3)
    m = DeepSpeech2Model(161, 12, num_rnn_layers=2, rnn_size=16, rnn_direction=direction, use_gru=True,
                         num_fc_layers=1, fc_layers_size_list=[24])
    state = m.state_dict()
    assert list(state["encoder.rnn.0.weight_ih_l0"].shape) == [48, 1248]  # 3 gates
    assert list(state["encoder.fc_layers_list.0.weight"].shape) == [32 if direction == "bidirect" else 16, 24]
    feats, lengths = raw_batch()
    feats = paddle.to_tensor(feats[:, :120] / 10.0)
    lengths = paddle.to_tensor([120, 80], dtype="int64")
    loss, _ = m(feats, lengths, paddle.to_tensor([[1, 2, 3], [4, 5, -1]], dtype="int64"),
                paddle.to_tensor([3, 2], dtype="int64"))
    loss.backward()
    assert np.isfinite(float(loss)) and m.encoder.rnn[0].weight_ih_l0.grad is not None
    m.eval()
    with paddle.no_grad():
        _, out_lengths, full = m.forward_encoder(feats, lengths)
        assert full.shape[-1] == 12
        if direction == "forward":
            chunked, _ = m.forward_chunk_by_chunk(feats, lengths, 2)
            for b, n in enumerate(out_lengths.numpy()):
                np.testing.assert_allclose(chunked.numpy()[b, :n], full.numpy()[b, :n], atol=1e-5, rtol=0)


def _ds2_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "ds2.yaml"
    path.write_text(
        "features:\n  num_mel_bins: 161\n"
        "model:\n  name: deepspeech2\n  deepspeech2:\n    num_rnn_layers: 2\n    rnn_layer_size: 8\n"
        f"    rnn_direction: forward\n{extra}"
        "vocab_size: 20\ninput_dim: 161\n", encoding="utf-8")
    return path


def test_config_builds_a_deepspeech2_model(tmp_path):
    config = load_config(_ds2_config(tmp_path))
    m = build_model(config)
    assert isinstance(m, DeepSpeech2Model) and m.encoder.supports_streaming
    assert CMVN_KEYS <= set(m.state_dict())
    assert isinstance(build_model(AsrConfig(vocab_size=20, input_dim=80)), paddle.nn.Layer)  # U2 still builds


def test_an_unknown_deepspeech2_key_is_an_error(tmp_path):
    with pytest.raises(AsrError, match=r"unknown config key\(s\) 'model.deepspeech2.rnn_size'"):
        load_config(_ds2_config(tmp_path, "    rnn_size: 8\n"))


def test_only_two_conv_layers_are_accepted(tmp_path):
    with pytest.raises(AsrError, match="num_conv_layers must be 2"):
        build_model(load_config(_ds2_config(tmp_path, "    num_conv_layers: 3\n")))


@pytest.mark.parametrize("name", MODELS)
def test_import_paddlespeech_reads_an_asr0_folder(tmp_path, name):
    meta, g = golden(name)
    exp = import_paddlespeech(FIXTURES / name, tmp_path / name, log=lambda *_: None)
    config = load_config(exp / "train.yaml")
    ds2 = config.model.deepspeech2
    assert config.model.name == "deepspeech2" and config.input_dim == 161 and config.vocab_size == meta["vocab_size"]
    assert (ds2.rnn_direction, ds2.use_gru, ds2.num_rnn_layers, ds2.rnn_layer_size) == (
        meta["model"]["rnn_direction"], meta["model"]["use_gru"], 2, 8)
    assert ds2.num_fc_layers == 0 and ds2.fc_layers_size_list == []
    assert config.scheduler.name == "exponential" and config.scheduler.gamma == 0.93
    assert config.optim.lr == 5e-4 and config.optim.grad_clip == 3.0
    m = build_model(config)
    load_weights(m, exp / "checkpoints" / "avg_1.pdparams")
    m.eval()
    feats = raw_feats()[None]
    with paddle.no_grad():
        feat_lengths = paddle.to_tensor([feats.shape[1]], dtype="int64")
        _, lengths, log_probs = m.forward_encoder(paddle.to_tensor(feats), feat_lengths)
    n = int(lengths[0])
    assert n == g["encoder_lengths"][0]
    np.testing.assert_allclose(log_probs.numpy()[0], g["ctc_log_probs"][0, :n], atol=ATOL, rtol=0)
