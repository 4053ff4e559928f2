"""Export -> Paddle Inference parity -> PaddleSlim PTQ -> oneDNN INT8, end to end, on a small U2
model of the shipped streaming config (conformer encoder, causal conv, transformer decoder), and
its U2++ form (bitransformer decoder) where the decoder program differs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
import soundfile

from paddle_asr.artifacts import mark_complete
from paddle_asr.config import DecodeConfig, load_config
from paddle_asr.cpu_settings import cpu_has_vnni
from paddle_asr.decode.dygraph_backend import DygraphBackend
from paddle_asr.decode.recognizer import Recognizer, encode_streaming
from paddle_asr.decode.search import ctc_prefix_beam_search, pad_hypotheses
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import read_bundle, write_bundle_files
from paddle_asr.export.calibrate import quantize_bundle
from paddle_asr.export.common import save_function
from paddle_asr.export.export import export_model
from paddle_asr.export.inference import Predictor, find_model_files
from paddle_asr.export.quantize import quantize_ptq
from paddle_asr.export.runtime import load_backend
from paddle_asr.export.u2 import runtime_functions
from paddle_asr.features import compute_fbank
from paddle_asr.models.registry import build_model
from tests.conftest import real_fixture
from tests.test_model import check_cache_stays_bounded, check_streams_batched_equal_alone

METHODS = ("ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring")
REPO = Path(__file__).resolve().parents[1]
FEAT_DIM = 80
WAVS = ("aishell-BAC009S0724W0121.wav", "librispeech-1995-1837-0001.wav")


def build_small_u2(seed: int = 0, decoder_clock: str = "token", decoder: str = "transformer"):
    """A small streaming U2 with random weights; its decoder reads the encoder frames at positions
    counted in CTC units (memory_position_unit token, as the Mandarin demo), so every export and
    runtime test carries that part of the decoder program too. decoder bitransformer: U2++, with a
    one-block right-to-left decoder and reverse_weight 0.3."""
    config = dataclasses.replace(load_config(REPO / "recipes/aishell/conf/chunk_conformer.yaml"), vocab_size=60,
                                 input_dim=FEAT_DIM)
    config.model.encoder = dataclasses.replace(config.model.encoder, output_size=144, linear_units=288, num_blocks=2,
                                               input_layer="conv2d")
    config.model.decoder = dataclasses.replace(config.model.decoder, linear_units=288, num_blocks=1,
                                               memory_positions=True, memory_position_unit=decoder_clock)
    if decoder == "bitransformer":
        config.model.decoder = dataclasses.replace(config.model.decoder, type=decoder, r_num_blocks=1,
                                                   reverse_weight=0.3)
    paddle.seed(seed)
    model = build_model(config, (np.linspace(5, 12, FEAT_DIM).astype("float32"), np.full(FEAT_DIM, 0.3, "float32")))
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):  # trained models have non-zero biases; zeros would hide padding leaks
            p.set_value(rng.normal(0, 0.2, p.shape).astype("float32"))
    # Peaky posteriors, as after training, so beam searches are not decided by float noise.
    model.ctc.ctc_lo.weight.set_value(model.ctc.ctc_lo.weight.numpy() * 6)
    for name, p in model.named_parameters():
        if name.startswith("decoder.") and name.endswith("output_layer.weight"):  # each direction's
            p.set_value(p.numpy() * 6)
    model.eval()
    return config, model


def random_batch(rng: np.random.Generator, lengths) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths, dtype=np.int64)
    feats = (rng.standard_normal((len(lengths), int(lengths.max()), FEAT_DIM)) * 3 + 8).astype(np.float32)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    return feats, lengths


def export_small_u2(tmp_path_factory, decoder: str = "transformer"):
    config, model = build_small_u2(decoder=decoder)
    out = tmp_path_factory.mktemp("exp") / "fp32"
    diffs = export_model(model, FEAT_DIM, out)
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("".join(f"{u}\n" for u in ["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(57)] + ["<eos>"]))
    write_bundle_files(out, config, vocab, model, checkpoint="test", functions=sorted(diffs))
    return model, out, diffs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_small_u2(tmp_path_factory)


@pytest.fixture(scope="module")
def exported_u2pp(tmp_path_factory):
    return export_small_u2(tmp_path_factory, "bitransformer")


@pytest.mark.parametrize("decoder", ["transformer", "bitransformer"])
def test_every_runtime_function_is_exported_and_matches(request, decoder):
    """Each program within 1e-3 of the dynamic graph (export checks it before writing); a U2++
    decoder program returns both directions, as meta.json says."""
    model, out, diffs = request.getfixturevalue("exported" if decoder == "transformer" else "exported_u2pp")
    assert sorted(diffs) == ["ctc_activation", "decoder", "decoder_step", "encoder", "encoder_chunk"]
    assert max(diffs.values()) < 1e-3
    for name in diffs:
        assert (out / name / "model.pdmodel").is_file() and (out / name / "model.pdiparams").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sos"] == meta["eos"] == 59 and meta["supports_streaming"]
    assert meta["att_cache_shape"] == [2, 4, 0, 72] and meta["cnn_cache_shape"] == [2, 144, 14]
    assert meta["encoder_chunk_version"] == 3 and meta["max_encoder_frames"] == 5000
    assert meta["decoder_cache_shape"] == [1, 4, 72]  # the left-to-right decoder's 1 block
    assert Predictor(out / "encoder_chunk").input_names == ["xs", "offsets", "att_cache", "cache_lengths", "cnn_cache"]
    u2pp = decoder == "bitransformer"
    assert (meta["bidirectional_decoder"], meta["reverse_weight"]) == (u2pp, 0.3 if u2pp else 0.0)
    rng = np.random.default_rng(7)
    enc = rng.standard_normal((2, 30, 144)).astype(np.float32)
    hyps, lengths = np.full((6, 5), 59, np.int64), np.asarray([5, 3, 1, 5, 2, 4], np.int64)
    hyps[:, 1:] = rng.integers(1, 59, (6, 4))
    outputs = Predictor(out / "decoder").run({"hyps": hyps, "hyps_lengths": lengths, "encoder_out": enc,
                                              "encoder_lengths": np.asarray([30, 22], np.int64)})
    assert len(outputs) == (2 if u2pp else 1) and all(o.shape == (6, 5, 60) for o in outputs)


@pytest.mark.parametrize("runtime", ["exported", "dygraph"])
def test_streams_in_one_batch_equal_each_stream_alone(exported, runtime):
    """The server's batched chunk call: three streams at different points (offsets, cache lengths,
    one empty cache) in one call equal each alone; the cache stays at 2 chunks with left chunks 2."""
    model, out, _ = exported
    backend = load_backend(out, json.loads((out / "meta.json").read_text())) if runtime == "exported" else (
        DygraphBackend(model))
    rng = np.random.default_rng(6)
    utterances = [random_batch(rng, [260])[0][0] for _ in range(3)]
    for required in (-1, 8):
        check_streams_batched_equal_alone(backend, utterances, 4, required, atol=1e-4)
    check_cache_stays_bounded(backend, utterances[0], 4)


def test_a_bundle_with_the_batch_1_chunk_program_must_be_exported_again(exported):
    _, out, _ = exported
    meta = json.loads((out / "meta.json").read_text())
    del meta["encoder_chunk_version"]
    with pytest.raises(AsrError, match="export it again with stage 4"):
        load_backend(out, meta)


@pytest.mark.parametrize("use_mkldnn", [False, True])
def test_encoder_parity_on_padded_batches(exported, use_mkldnn):
    model, out, _ = exported
    pred = Predictor(out / "encoder", use_mkldnn=use_mkldnn)
    rng = np.random.default_rng(1)
    for lengths in ([120], [211, 64, 150]):
        feats, lens = random_batch(rng, lengths)
        with paddle.no_grad():
            ref = [t.numpy() for t in model.forward_encoder(paddle.to_tensor(feats), paddle.to_tensor(lens))]
        enc, enc_len, lp = pred.run({"feats": feats, "feats_lengths": lens})
        np.testing.assert_array_equal(enc_len, ref[1])
        for i, n in enumerate(enc_len):
            np.testing.assert_allclose(lp[i, :n], ref[2][i, :n], atol=1e-3, rtol=0)
            np.testing.assert_allclose(enc[i, :n], ref[0][i, :n], atol=1e-3, rtol=0)


@pytest.mark.parametrize("chunk", [-1, 4])
def test_exported_model_gives_the_dynamic_graph_hypotheses_for_every_method(exported, chunk):
    model, out, _ = exported
    meta = json.loads((out / "meta.json").read_text())
    conf = DecodeConfig(beam_size=4, decoding_chunk_size=chunk)
    feats, lens = random_batch(np.random.default_rng(4), [260, 190, 150])
    ours = Recognizer(load_backend(out, meta), conf).recognize(feats, lens)
    theirs = Recognizer(DygraphBackend(model), conf).recognize(feats, lens)
    assert set(ours) == set(METHODS)
    for method in METHODS:
        assert ours[method] == theirs[method], method
        assert all(len(h) > 0 for h in ours[method])


class _Counted:
    """A backend whose decoder calls are counted (the calls themselves are the backend's)."""

    def __init__(self, backend, incremental: bool) -> None:
        self.backend, self.calls = backend, {"decode": 0, "decode_step": 0}
        self.decoder_step_cache = backend.decoder_step_cache if incremental else None

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def decode(self, *args):
        self.calls["decode"] += 1
        return self.backend.decode(*args)

    def decode_step(self, *args):
        self.calls["decode_step"] += 1
        return self.backend.decode_step(*args)


@pytest.mark.parametrize("runtime", ["dygraph", "exported"])
def test_incremental_attention_search_gives_the_whole_prefix_search_s_hypotheses(exported, runtime):
    """Attention beam search on the step program (one token a row, the keys and values cached and
    reordered with the beams) finds the hypotheses that running the decoder over each whole prefix
    finds, on the real AISHELL and LibriSpeech fixtures, their beams ending at different steps
    (finished utterances leave the calls); attention search calls only the step program."""
    model, out, _ = exported
    backend = DygraphBackend(model) if runtime == "dygraph" else load_backend(
        out, json.loads((out / "meta.json").read_text()))
    assert backend.decoder_step_cache == (1, 4, 72)
    _, features, _ = read_bundle(out)
    feats = [compute_fbank(soundfile.read(str(real_fixture(w)), dtype="int16")[0], features) for w in WAVS]
    lens = np.asarray([len(f) for f in feats], np.int64)
    batch = np.zeros((len(feats), int(lens.max()), FEAT_DIM), np.float32)
    for i, f in enumerate(feats):
        batch[i, :len(f)] = f
    conf = DecodeConfig(methods=["attention"], beam_size=5)
    found = {}
    for incremental in (False, True):
        counted = _Counted(backend, incremental)
        found[incremental] = Recognizer(counted, conf).recognize(batch, lens)["attention"]
        assert counted.calls["decode_step" if incremental else "decode"] > 3
        assert counted.calls["decode" if incremental else "decode_step"] == 0
        if runtime == "exported":  # the step program is loaded when a search first needs it
            assert (backend._step_program is not None) == incremental
    assert found[True] == found[False]
    assert len({len(h) for h in found[True]}) > 1  # beams ended at different steps


def test_a_bundle_exported_before_the_step_program_decodes_on_whole_prefixes(exported, tmp_path):
    """A bundle without decoder_step (and without decoder_cache_shape in meta.json) still decodes with
    attention search: on the whole-prefix decoder, with the step program's hypotheses."""
    _, out, _ = exported
    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("decoder_step"))
    meta = json.loads((old / "meta.json").read_text())
    del meta["decoder_cache_shape"]
    (old / "meta.json").write_text(json.dumps(meta))
    feats, lens = random_batch(np.random.default_rng(5), [260, 150])
    conf = DecodeConfig(methods=["attention"], beam_size=4)
    backends = [load_backend(d, json.loads((d / "meta.json").read_text())) for d in (old, out)]
    assert [b.decoder_step_cache for b in backends] == [None, (1, 4, 72)]
    found = [Recognizer(b, conf).recognize(feats, lens)["attention"] for b in backends]
    assert found[0] == found[1] and all(found[0])


def test_pir_export_loads_too(exported, tmp_path):
    model, _, _ = exported
    fn = next(f for f in runtime_functions(model, FEAT_DIM) if f.name == "ctc_activation")
    save_function(model, fn, tmp_path / "pir", pir=True)
    prog, _ = find_model_files(tmp_path / "pir")
    assert prog.name == "model.json"
    enc = np.random.default_rng(5).standard_normal((2, 9, 144)).astype(np.float32)
    (got,) = Predictor(tmp_path / "pir").run({"encoder_out": enc})
    with paddle.no_grad():
        ref = model.ctc_activation(paddle.to_tensor(enc)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_missing_model_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        find_model_files(tmp_path)


def _agreement(a: np.ndarray, b: np.ndarray, lengths: np.ndarray) -> float:
    same = sum(int((a[i, :n].argmax(-1) == b[i, :n].argmax(-1)).sum()) for i, n in enumerate(lengths))
    return same / max(int(np.sum(lengths)), 1)


# Frame argmax agreement of the INT8 encoder with FP32 on this test's model. Without VNNI oneDNN's
# INT8 GEMMs sum 8-bit products in 16 bits (cpu_settings.cpu_has_vnni) and the agreement measured
# 0.84 on an AMD EPYC (Zen 3), against >= 0.9 on an AVX-512 VNNI Xeon; stage 6 warns there.
INT8_AGREEMENT = 0.9 if cpu_has_vnni() else 0.8


def test_quantize_int8_encoder(exported, tmp_path):
    _, fp32_dir, _ = exported
    rng = np.random.default_rng(2)
    calib = [random_batch(rng, [180, 140, 100, 160]) for _ in range(4)]
    report = quantize_ptq(fp32_dir / "encoder", tmp_path / "int8", lambda: iter(calib))
    int8_dir = tmp_path / "int8"
    assert (int8_dir / "model.pdmodel").is_file() and (int8_dir / "model.pdiparams").is_file()
    assert report["quantized_ops"].get("matmul_v2", 0) + report["quantized_ops"].get("mul", 0) > 0
    assert report["int8_bytes"] < report["fp32_bytes"]
    fp32, int8 = Predictor(fp32_dir / "encoder"), Predictor(int8_dir, int8=True)
    for lengths in ([157], [190, 75, 133, 120]):
        feats, lens = random_batch(rng, lengths)
        _, ref_len, ref_lp = fp32.run({"feats": feats, "feats_lengths": lens})
        _, ol, lp = int8.run({"feats": feats, "feats_lengths": lens})
        np.testing.assert_array_equal(ol, ref_len)
        assert np.isfinite(lp).all() and lp.dtype == np.float32
        assert _agreement(lp, ref_lp, ol) >= INT8_AGREEMENT


def test_observer_pairs_do_not_round_fp32_activations(exported, tmp_path):
    """With no layer quantized, the 'INT8' model must compute exactly what FP32 does.

    PaddleSlim's ONNX format puts quantize/dequantize pairs after residual adds, layer norms,
    softmax... Left in, oneDNN executes them as real rounding (+2.4 CER points on the demo model).
    """
    _, fp32_dir, _ = exported
    rng = np.random.default_rng(3)
    calib = [random_batch(rng, [150, 120]) for _ in range(2)]
    report = quantize_ptq(fp32_dir / "encoder", tmp_path / "none", lambda: iter(calib), quantizable_op_type=["mul"])
    assert report["observers_removed"] > 0 and not report["quantized_ops"]
    feats, lens = random_batch(rng, [170, 90])
    _, _, ref_lp = Predictor(fp32_dir / "encoder").run({"feats": feats, "feats_lengths": lens})
    _, ol, lp = Predictor(tmp_path / "none", int8=True).run({"feats": feats, "feats_lengths": lens})
    for i, n in enumerate(ol):
        np.testing.assert_allclose(lp[i, :n], ref_lp[i, :n], atol=1e-4, rtol=0)


def test_stage_6_quantizes_the_chunk_program_with_the_encoder(exported, tmp_path):
    """A streaming bundle's INT8 encoder brings an INT8 `encoder_chunk` (calibrated on the chunks of
    the calibration utterances, first convolution kept FP32 as in the encoder): streaming runs
    INT8 too, and its hypotheses stay close to FP32 streaming."""
    fp32_dir = tmp_path / "fp32"
    shutil.copytree(exported[1], fp32_dir)
    mark_complete(fp32_dir, "stage 4")  # stage 6 records which FP32 bundle it came from
    wav = REPO / "tests" / "fixtures" / "aishell-BAC009S0724W0121.wav"
    calib = tmp_path / "calib.list"
    calib.write_text("".join(json.dumps({"key": f"utt{i}", "wav": str(wav), "duration": 4.3, "text": "一"}) + "\n"
                             for i in range(4)), encoding="utf-8")
    reports = quantize_bundle(fp32_dir, tmp_path / "int8", calib, num_calib=4, batch_size=2, fp32_layers="auto",
                              log=lambda *_: None)
    assert sorted(reports) == ["encoder", "encoder_chunk"]
    chunk = reports["encoder_chunk"]
    # The same products in INT8: the encoder's FP32 output layer is the CTC projection, which the
    # chunk program does not have.
    assert chunk["quantized_ops"]["matmul_v2"] == reports["encoder"]["quantized_ops"]["matmul_v2"]
    assert chunk["quantized_ops"]["conv2d"] > 0 and len(chunk["kept_fp32_weights"]) == 1  # the first convolution
    meta = json.loads((tmp_path / "int8" / "meta.json").read_text())
    assert meta["int8_functions"] == ["encoder", "encoder_chunk"]
    fp32, int8 = load_backend(fp32_dir, json.loads((fp32_dir / "meta.json").read_text())), load_backend(
        tmp_path / "int8", meta)
    # Crops of the calibration audio (the domain the scales were measured on).
    _, features, _ = read_bundle(fp32_dir)
    audio = compute_fbank(soundfile.read(str(wav), dtype="int16")[0], features)
    crops = [audio, audio[50:350], audio[200:400]]
    for feats in crops:
        streamed = [encode_streaming(b, feats, 16, -1) for b in (fp32, int8)]
        assert np.abs(streamed[0] - streamed[1]).max() > 1e-4  # the INT8 program really runs
        ref_lp, lp = (b.ctc_activation(s) for b, s in zip((fp32, int8), streamed))
        assert _agreement(lp, ref_lp, [lp.shape[1]]) >= INT8_AGREEMENT
    lens = np.asarray([len(c) for c in crops], np.int64)
    batch = np.stack([np.pad(c, ((0, len(audio) - len(c)), (0, 0))) for c in crops])
    conf = DecodeConfig(beam_size=4, decoding_chunk_size=16)
    hyps = Recognizer(int8, conf).recognize(batch, lens)
    assert set(hyps) == set(METHODS) and all(len(h) > 0 for m in METHODS for h in hyps[m])


def test_stage_6_with_a_missing_calibration_manifest_names_it_and_writes_nothing(exported, tmp_path, capsys):
    from paddle_asr.cli import main as cli_main

    missing = tmp_path / "data/train/data.list"
    assert cli_main(["quantize", "--bundle", str(exported[1]), "--out", str(tmp_path / "int8"),
                     "--calib", str(missing)]) != 0
    err = capsys.readouterr().err
    assert f"calibration manifest {missing} does not exist" in err and "--calib" in err and "Traceback" not in err
    assert not (tmp_path / "int8").exists()


def test_stage_6_quantizes_a_u2pp_decoder_with_both_output_layers_in_fp32(exported_u2pp, tmp_path):
    """The U2++ decoder program through the INT8 path: both directions' output layers stay FP32 (the
    edge layers), the rest of their products run INT8, and rescoring weighs both INT8 directions."""
    _, fp32_src, _ = exported_u2pp
    fp32_dir = tmp_path / "fp32"
    shutil.copytree(fp32_src, fp32_dir)
    mark_complete(fp32_dir, "stage 4")
    wav = REPO / "tests" / "fixtures" / "aishell-BAC009S0724W0121.wav"
    calib = tmp_path / "calib.list"
    calib.write_text("".join(json.dumps({"key": f"utt{i}", "wav": str(wav), "duration": 4.3, "text": "一丁七万"[i:]})
                             + "\n" for i in range(4)), encoding="utf-8")
    reports = quantize_bundle(fp32_dir, tmp_path / "int8", calib, num_calib=4, batch_size=2, functions="decoder",
                              fp32_layers="output_layer", log=lambda *_: None)
    report = reports["decoder"]
    assert len(report["kept_fp32_weights"]) == 2 and report["quantized_ops"]["matmul_v2"] > 0
    meta = json.loads((tmp_path / "int8" / "meta.json").read_text())
    assert meta["int8_functions"] == ["decoder"] and meta["bidirectional_decoder"]
    fp32, int8 = (load_backend(d, json.loads((d / "meta.json").read_text())) for d in (fp32_dir, tmp_path / "int8"))
    # PTQ calibrates the decoder alone: attention search runs that INT8 decoder, not the FP32 step program
    assert (fp32.decoder_step_cache, int8.decoder_step_cache) == ((1, 4, 72), None)
    _, features, _ = read_bundle(fp32_dir)
    feats = compute_fbank(soundfile.read(str(wav), dtype="int16")[0], features)[None]  # the calibration audio
    lens = np.asarray([feats.shape[1]], np.int64)
    enc, enc_lengths, _ = fp32.encode(feats, lens)
    hyps, hyp_lengths = pad_hypotheses([[1, 2, 4], [8, 2, 4, 1], [1]], 59, 59)
    for ref, got in zip(*(b.decode_bidirectional(hyps, hyp_lengths, enc, enc_lengths) for b in (fp32, int8))):
        diff = np.concatenate([np.abs(ref[i, :n] - got[i, :n]).ravel() for i, n in enumerate(hyp_lengths)])
        # INT8 really runs, in both directions, and stays close: measured mean 0.09 against a spread of 8
        assert diff.max() > 1e-5 and diff.mean() < 0.05 * ref.std()
    conf = DecodeConfig(methods=["ctc_prefix_beam_search", "attention_rescoring"], beam_size=4)
    hyps = Recognizer(int8, conf).recognize(feats, lens)
    assert hyps["attention_rescoring"][0] in [h for h, _ in ctc_prefix_beam_search(
        int8.encode(feats, lens)[2][0], 4)]
