"""DeepSpeech2 export -> Paddle Inference -> streaming through `encoder_chunk` -> PaddleSlim INT8,
on small models (2 RNN layers of 32, 30 units, fixed random weights) with the CMVN of the
PaddleSpeech fixture, fed the real AISHELL utterance as 161-bin fbank; and the `paddle-asr`
export/quantize stages on the PaddleSpeech fixture imported with `import-paddlespeech`."""

from __future__ import annotations

import json
import shutil
import time
from functools import cache
from pathlib import Path

import numpy as np
import paddle
import pytest
import soundfile

from paddle_asr.config import AsrConfig, DeepSpeech2Config, FeatureConfig, ModelConfig
from paddle_asr.cpu_settings import cpu_has_vnni
from paddle_asr.decode.dygraph_backend import DeepSpeech2DygraphBackend
from paddle_asr.decode.recognizer import encode_streaming
from paddle_asr.decode.search import ctc_greedy_search
from paddle_asr.errors import AsrError
from paddle_asr.export.backend import ExportedBackend
from paddle_asr.export.bundle import copy_bundle_files, write_bundle_files
from paddle_asr.export.calibrate import default_fp32_layers
from paddle_asr.export.deepspeech2 import DeepSpeech2ExportedBackend
from paddle_asr.export.export import export_model
from paddle_asr.export.inference import Predictor
from paddle_asr.export.quantize import edge_layer_weights, quantize_ptq
from paddle_asr.export.runtime import load_backend
from paddle_asr.features import compute_fbank, load_cmvn
from paddle_asr.models.registry import build_model
from tests.test_model import check_streams_batched_equal_alone

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WAV = FIXTURES / "aishell-BAC009S0724W0121.wav"
CMVN = FIXTURES / "paddlespeech" / "deepspeech2" / "data" / "mean_std.json"
FEAT_DIM, VOCAB = 161, 30
ATOL = 1e-4
# name -> (rnn_direction, use_gru)
MODELS = {"offline_lstm": ("bidirect", False), "online_lstm": ("forward", False), "online_gru": ("forward", True)}
ONLINE = ("online_lstm", "online_gru")


@cache
def utterance() -> np.ndarray:
    samples, _ = soundfile.read(str(WAV), dtype="int16")
    return compute_fbank(samples, FeatureConfig(num_mel_bins=FEAT_DIM))  # [426, 161]


def real_batch(lengths=(426, 300), rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the utterance (from the start, or from random offsets), zero-padded."""
    feats = utterance()
    batch = np.zeros((len(lengths), max(lengths), FEAT_DIM), np.float32)
    for i, n in enumerate(lengths):
        start = 0 if rng is None else int(rng.integers(0, len(feats) - n + 1))
        batch[i, :n] = feats[start:start + n]
    return batch, np.asarray(lengths, np.int64)


def build_small_ds2(direction: str, use_gru: bool, seed: int = 0):
    config = AsrConfig(features=FeatureConfig(num_mel_bins=FEAT_DIM), vocab_size=VOCAB, input_dim=FEAT_DIM,
                       model=ModelConfig(name="deepspeech2", deepspeech2=DeepSpeech2Config(
                           num_rnn_layers=2, rnn_layer_size=32, rnn_direction=direction, use_gru=use_gru)))
    paddle.seed(seed)
    model = build_model(config, load_cmvn(CMVN))
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):  # trained models have non-zero biases
            p.set_value(rng.normal(0, 0.2, p.shape).astype("float32"))
    # Peaky posteriors, as after training, so greedy paths are not decided by float noise.
    model.decoder.ctc_lo.weight.set_value(model.decoder.ctc_lo.weight.numpy() * 6)
    model.eval()
    return config, model


def write_vocab(path: Path) -> Path:
    units = ["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(VOCAB - 3)] + ["<eos>"]
    path.write_text("".join(f"{u}\n" for u in units), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, tuple]:
    """{name: (model, bundle dir, export diffs)} for the three small models."""
    vocab = write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    out = {}
    for name, (direction, use_gru) in MODELS.items():
        config, model = build_small_ds2(direction, use_gru)
        bundle = tmp_path_factory.mktemp(name) / "fp32"
        diffs = export_model(model, FEAT_DIM, bundle)
        write_bundle_files(bundle, config, vocab, model, checkpoint="test", functions=sorted(diffs))
        out[name] = (model, bundle, diffs)
    return out


def backend_of(bundle: Path) -> ExportedBackend:
    return load_backend(bundle, json.loads((bundle / "meta.json").read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", MODELS)
def test_programs_and_meta(bundles, name):
    model, bundle, diffs = bundles[name]
    online = name in ONLINE
    expected = ["ctc_activation", "encoder", "encoder_chunk"] if online else ["ctc_activation", "encoder"]
    assert sorted(diffs) == expected
    assert max(diffs.values()) < ATOL
    assert not (bundle / "decoder").exists()
    for fn in diffs:
        assert (bundle / fn / "model.pdmodel").is_file() and (bundle / fn / "model.pdiparams").is_file()
    meta = json.loads((bundle / "meta.json").read_text(encoding="utf-8"))
    assert meta["model"] == "deepspeech2" and meta["has_decoder"] is False and meta["sos"] is meta["eos"] is None
    assert (meta["subsampling_rate"], meta["right_context"], meta["min_input_frames"]) == (4, 6, 7)
    assert meta["supports_streaming"] is online and meta["encoder_type"] == ("gru" if "gru" in name else "lstm")
    assert meta["encoder_output_size"] == (32 if online else 64)
    if online:  # the chunk program's inputs are exactly the states meta names: no dummy c for a GRU
        assert meta["state_names"] == (["h"] if "gru" in name else ["h", "c"]) and meta["state_shape"] == [2, 32]
        assert meta["encoder_chunk_version"] == 3
        assert Predictor(bundle / "encoder_chunk").input_names == ["feats", "feats_lengths", *meta["state_names"]]


@pytest.mark.parametrize("use_mkldnn", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_exported_encoder_equals_the_dynamic_graph(bundles, name, use_mkldnn):
    model, bundle, _ = bundles[name]
    feats, lengths = real_batch()
    with paddle.no_grad():
        ref = [t.numpy() for t in model.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths))]
    enc, enc_lengths, log_probs = Predictor(bundle / "encoder", use_mkldnn=use_mkldnn).run(
        {"feats": feats, "feats_lengths": lengths})
    np.testing.assert_array_equal(enc_lengths, ref[1])
    for i, n in enumerate(enc_lengths):
        np.testing.assert_allclose(enc[i, :n], ref[0][i, :n], atol=ATOL, rtol=0)
        np.testing.assert_allclose(log_probs[i, :n], ref[2][i, :n], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_backend_interface(bundles, name):
    model, bundle, _ = bundles[name]
    backend = backend_of(bundle)
    assert isinstance(backend, DeepSpeech2ExportedBackend) and isinstance(backend, ExportedBackend)
    assert (backend.has_decoder, backend.sos, backend.eos) == (False, None, None)
    assert (backend.subsampling_rate, backend.right_context) == (4, 6)
    assert backend.supports_streaming is (name in ONLINE)
    feats, lengths = real_batch()
    enc, enc_lengths, log_probs = backend.encode(feats, lengths)  # time padded to LENGTH_BUCKET inside
    with paddle.no_grad():
        ref_lp = model.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lengths))[2].numpy()
    assert enc.shape[1] == log_probs.shape[1] == enc_lengths.max() == 105
    for i, n in enumerate(enc_lengths):
        np.testing.assert_allclose(log_probs[i, :n], ref_lp[i, :n], atol=ATOL, rtol=0)
    np.testing.assert_allclose(backend.ctc_activation(enc), log_probs, atol=ATOL, rtol=0)
    if name not in ONLINE:
        with pytest.raises(AsrError, match="cannot stream"):
            encode_streaming(backend, feats[0], 4, -1)


@pytest.mark.parametrize("chunk", [1, 4, 16])
@pytest.mark.parametrize("name", ONLINE)
def test_encode_streaming_equals_the_full_utterance(bundles, name, chunk):
    model, bundle, _ = bundles[name]
    backend = backend_of(bundle)
    feats, lengths = real_batch()
    enc, enc_lengths, _ = backend.encode(feats, lengths)
    for i, n in enumerate(lengths):
        streamed = encode_streaming(backend, feats[i, :n], chunk, -1)
        assert streamed.shape == (1, enc_lengths[i], enc.shape[2])
        np.testing.assert_allclose(streamed[0], enc[i, :enc_lengths[i]], atol=ATOL, rtol=0)
        # The model's own chunk-by-chunk loop (CTC log-probs) agrees as well.
        with paddle.no_grad():
            ref, _ = model.forward_chunk_by_chunk(paddle.to_tensor(feats[i:i + 1, :n]),
                                                  paddle.to_tensor([n], dtype="int64"), chunk)
        np.testing.assert_allclose(backend.ctc_activation(streamed), ref.numpy(), atol=ATOL, rtol=0)


def test_encode_streaming_rejects_too_short_input(bundles):
    backend = backend_of(bundles["online_lstm"][1])
    assert encode_streaming(backend, utterance()[:7], 4, -1).shape[1] == 1
    with pytest.raises(AsrError, match="fewer than the 7"):
        encode_streaming(backend, utterance()[:6], 4, -1)


@pytest.mark.parametrize("runtime", ["exported", "dygraph"])
@pytest.mark.parametrize("name", ONLINE)
def test_streams_in_one_batch_equal_each_stream_alone(bundles, name, runtime):
    """The server's batched chunk call: three streams at different points of different real audio
    (no history, 1 chunk, 3 chunks done) in one call equal each alone; a stream's short last
    window is padded inside and gives only its valid frames."""
    model, bundle, _ = bundles[name]
    backend = backend_of(bundle) if runtime == "exported" else DeepSpeech2DygraphBackend(model)
    feats = utterance()
    utterances = [feats[:300], feats[126:], feats[60:360]]
    states = check_streams_batched_equal_alone(backend, utterances, 4, -1, atol=ATOL)
    assert all(s.window == 19 for s in states)  # (4 - 1) * 4 + 7 input frames
    out, (state,) = backend.encode_chunks(feats[None, 400:411], states[:1], -1)
    assert out.shape[1] == 2 and state.window == 19  # 11 frames: 2 encoder frames


def test_pir_export_loads_and_streams(tmp_path):
    """The same bundle as PIR programs (model.json): loads, matches, streams."""
    config, model = build_small_ds2("forward", False)
    diffs = export_model(model, FEAT_DIM, tmp_path / "pir", pir=True)
    write_bundle_files(tmp_path / "pir", config, write_vocab(tmp_path / "vocab.txt"), model, checkpoint="test",
                       functions=sorted(diffs))
    assert all((tmp_path / "pir" / fn / "model.json").is_file() for fn in diffs) and max(diffs.values()) < ATOL
    backend = backend_of(tmp_path / "pir")
    feats, lengths = real_batch()
    enc, enc_lengths, _ = backend.encode(feats, lengths)
    np.testing.assert_allclose(encode_streaming(backend, feats[1, :lengths[1]], 4, -1)[0], enc[1, :enc_lengths[1]],
                               atol=ATOL, rtol=0)


def _timed(predictor: Predictor, feeds: dict, repeats: int = 20) -> float:
    predictor.run(feeds)  # oneDNN builds its kernels for the shape on the first run
    start = time.perf_counter()
    for _ in range(repeats):
        predictor.run(feeds)
    return (time.perf_counter() - start) / repeats


def expected_int8_ops(vnni: bool) -> dict:
    return {"conv2d": 1, "matmul_v2": 1} if vnni else {"conv2d": 1}


def expected_fp32_ops(vnni: bool) -> dict:
    return {"conv2d": 1, "rnn": 2} if vnni else {"conv2d": 1, "rnn": 2, "matmul_v2": 1}


def test_int8_bundle_decodes(bundles, tmp_path):
    _, fp32_dir, _ = bundles["online_lstm"]
    rng = np.random.default_rng(0)
    calib = [real_batch((400, 300, 250, 200), rng) for _ in range(4)]
    int8_dir = tmp_path / "int8"
    int8_dir.mkdir()
    fp32_layers = default_fp32_layers("deepspeech2", cpu_has_vnni())
    report = quantize_ptq(fp32_dir / "encoder", int8_dir / "encoder", lambda: iter(calib), fp32_layers=fp32_layers)
    for name in ("ctc_activation", "encoder_chunk"):
        shutil.copytree(fp32_dir / name, int8_dir / name)
    copy_bundle_files(fp32_dir, int8_dir, precision="int8", int8_functions=["encoder"])
    # The second convolution runs in INT8, and the CTC output layer where the CPU has VNNI; the first
    # convolution is kept in FP32 on purpose and the RNNs have no INT8 path (quantize.RECURRENT_OPS).
    assert report["quantized_ops"] == expected_int8_ops(report["cpu_vnni"])
    assert report["fp32_ops"] == expected_fp32_ops(report["cpu_vnni"])
    assert report["cpu_vnni"] == cpu_has_vnni()
    assert report["kept_fp32_weights"] == edge_layer_weights(fp32_dir / "encoder" / "model.pdmodel", fp32_layers)
    assert report["int8_bytes"] < report["fp32_bytes"]

    fp32, int8 = backend_of(fp32_dir), backend_of(int8_dir)
    feats, lengths = real_batch()
    _, ref_lengths, ref_lp = fp32.encode(feats, lengths)
    _, got_lengths, got_lp = int8.encode(feats, lengths)
    np.testing.assert_array_equal(got_lengths, ref_lengths)
    assert np.isfinite(got_lp).all()
    diff = max(float(np.abs(got_lp[i, :n] - ref_lp[i, :n]).max()) for i, n in enumerate(ref_lengths))
    agree = np.mean(np.concatenate([got_lp[i, :n].argmax(-1) == ref_lp[i, :n].argmax(-1)
                                    for i, n in enumerate(ref_lengths)]))
    ref_hyps, got_hyps = ctc_greedy_search(ref_lp, ref_lengths), ctc_greedy_search(got_lp, got_lengths)
    assert all(len(h) > 0 for h in got_hyps)
    assert all(abs(len(a) - len(b)) <= max(1, len(b) // 10) for a, b in zip(got_hyps, ref_hyps))
    assert agree >= 0.95
    # Streaming in the INT8 bundle uses the FP32 chunk program: still the FP32 encoder's output.
    np.testing.assert_allclose(int8.ctc_activation(encode_streaming(int8, feats[0], 4, -1))[0], ref_lp[0],
                               atol=ATOL, rtol=0)

    pred_fp32, pred_int8 = Predictor(fp32_dir / "encoder"), Predictor(int8_dir / "encoder", int8=True)
    feeds = {"feats": np.concatenate([feats[:1]] * 8), "feats_lengths": np.full(8, lengths[0], np.int64)}
    t_fp32, t_int8 = _timed(pred_fp32, feeds), _timed(pred_int8, feeds)
    print(f"\nDS2 2x32 online LSTM encoder, INT8 vs FP32: quantized {report['quantized_ops']}, "
          f"FP32 {report['fp32_ops']}; "
          f"max |log-prob diff| {diff:.3g}, frame argmax agreement {agree:.3f}, greedy lengths "
          f"{[len(h) for h in got_hyps]} vs {[len(h) for h in ref_hyps]}; {report['fp32_bytes']} -> "
          f"{report['int8_bytes']} bytes; batch 8 x 426 frames: FP32 {t_fp32 * 1e3:.2f} ms, INT8 {t_int8 * 1e3:.2f} ms")


def test_cli_export_and_quantize_a_paddlespeech_model(tmp_path, monkeypatch, capsys):
    """Stages 4 and 6 through `paddle-asr` on the PaddleSpeech online fixture (asr0 folder)."""
    from paddle_asr.cli import main
    from paddle_asr.import_paddlespeech import import_paddlespeech

    exp = import_paddlespeech(FIXTURES / "paddlespeech" / "deepspeech2_online", tmp_path / "exp", log=lambda *_: None)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--exp_dir", str(exp), "--out", str(exp / "export" / "fp32")]) == 0
    fp32_dir = exp / "export" / "fp32"
    meta = json.loads((fp32_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["functions"] == ["ctc_activation", "encoder", "encoder_chunk"] and meta["state_shape"] == [2, 8]

    transcript = "广州市房地产中介协会分析"
    duration = len(soundfile.read(str(WAV))[0]) / 16000
    calib = tmp_path / "calib.list"
    calib.write_text("".join(json.dumps({"key": f"utt{i}", "wav": str(WAV), "duration": duration, "text": transcript},
                                        ensure_ascii=False) + "\n" for i in range(4)), encoding="utf-8")
    assert main(["quantize", "--bundle", str(fp32_dir), "--out", str(exp / "export" / "int8"), "--calib", str(calib),
                 "--functions", "decoder"]) == 1  # a CTC-only bundle has no decoder program
    capsys.readouterr()
    assert main(["quantize", "--bundle", str(fp32_dir), "--out", str(exp / "export" / "int8"), "--calib", str(calib),
                 "--num_calib", "4", "--batch_size", "2"]) == 0
    # Without VNNI the stage says what INT8 costs on this CPU; with it, it says nothing of the kind.
    assert ("this CPU has no VNNI" in capsys.readouterr().out) == (not cpu_has_vnni())
    report = json.loads((exp / "export" / "int8" / "quantize_report.json").read_text())
    # --fp32_layers auto: the first convolution, and the output layer too without VNNI
    assert report["encoder"]["fp32_ops"] == expected_fp32_ops(cpu_has_vnni())
    assert report["encoder"]["quantized_ops"] == expected_int8_ops(cpu_has_vnni())
    feats, lengths = real_batch()
    _, ref_lengths, ref_lp = backend_of(fp32_dir).encode(feats, lengths)
    _, got_lengths, got_lp = backend_of(exp / "export" / "int8").encode(feats, lengths)
    np.testing.assert_array_equal(got_lengths, ref_lengths)
    assert np.isfinite(got_lp).all()
