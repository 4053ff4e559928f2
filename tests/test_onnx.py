"""ONNX export (paddle2onnx) of a small U2 streaming model: ONNX Runtime against Paddle Inference
(outputs within 1e-4, the same hypotheses for every method, full and chunk by chunk), sherpa-onnx
reading the export unmodified, and a conversion that fails. PaddleSpeech's U2++ golden model: its
decoder.onnx returns both directions and ONNX Runtime gives PaddleSpeech's hypotheses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import onnx
import onnxruntime as ort
import paddle
import pytest
import sherpa_onnx
import soundfile
from paddle.static import InputSpec

from paddle_asr.config import DecodeConfig, FeatureConfig
from paddle_asr.decode.recognizer import Recognizer
from paddle_asr.decode.search import ctc_greedy_search
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import write_bundle_files
from paddle_asr.export.common import RuntimeFunction, save_function
from paddle_asr.export.export import export_model
from paddle_asr.export.inference import Predictor
from paddle_asr.export.onnx import (
    ENERGY_FLOOR,
    OFFLINE_MODEL,
    STREAMING_MODEL,
    TOKENS,
    export_onnx,
    snip_edges_shift,
)
from paddle_asr.export.onnx_backend import OnnxU2Backend
from paddle_asr.export.onnx_int8 import energy_matmuls, quantize_onnx_export, static_convolutions
from paddle_asr.export.runtime import load_backend, onnx_is_preferred
from paddle_asr.export.u2 import parity_inputs
from paddle_asr.features import compute_fbank, mel_bank_map
from paddle_asr.metrics.score import score
from tests.conftest import real_fixture
from tests.test_export_quant import FEAT_DIM, METHODS, build_small_u2, random_batch
from tests.test_model import check_streams_batched_equal_alone
from tests.test_paddlespeech_parity import U2PP, check_paddlespeech_hypotheses, export_golden, golden, import_golden

WAVS = ("aishell-BAC009S0724W0121.wav", "librispeech-1995-1837-0001.wav")
ATOL = 1e-4
# An INT8 decoder's log-probability of a hypothesis token against FP32's (activations quantized per
# call; on the small test model's random weights up to 0.18 apart).
DECODER_INT8_ATOL = 0.25


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config, model = build_small_u2()
    root = tmp_path_factory.mktemp("export")
    diffs = export_model(model, FEAT_DIM, root / "fp32")
    vocab = root / "vocab.txt"
    vocab.write_text("".join(f"{u}\n" for u in ["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(57)] + ["<eos>"]))
    write_bundle_files(root / "fp32", config, vocab, model, checkpoint="test", functions=sorted(diffs))
    export_onnx(root / "fp32", root / "onnx", model)
    return model, root / "fp32", root / "onnx"


@pytest.fixture(scope="module")
def backends(exported):
    _, fp32, onnx_dir = exported
    return load_backend(fp32, json.loads((fp32 / "meta.json").read_text())), OnnxU2Backend(onnx_dir)


def _io(path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    m = onnx.load(str(path))
    return ([v.name for v in m.graph.input], [v.name for v in m.graph.output],
            {p.key: p.value for p in m.metadata_props})


def test_layout_names_and_wenet_metadata(exported):
    _, _, out = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "ctc_activation.onnx", "decoder.onnx", "decoder_step.onnx", "encoder.onnx", "encoder_chunk.onnx",
        "features.yaml", "meta.json", "model-streaming.onnx", "model.onnx", "tokens.txt", "vocab.txt"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"
    inputs, outputs, meta = _io(out / OFFLINE_MODEL)
    assert (inputs, outputs) == (["x", "x_lens"], ["log_probs", "log_probs_lens"])
    assert _io(out / "encoder.onnx")[:2] == (["feats", "feats_lengths"], ["encoder_out", "encoder_lengths",
                                                                          "ctc_log_probs"])
    assert meta["model_type"] == "wenet_ctc" and meta["vocab_size"] == "60" and meta["subsampling_factor"] == "4"
    inputs, outputs, meta = _io(out / STREAMING_MODEL)
    assert inputs == ["x", "offset", "required_cache_size", "attn_cache", "conv_cache", "attn_mask"]
    assert outputs == ["log_probs", "next_att_cache", "next_conv_cache"]
    assert {k: meta[k] for k in ("head", "num_blocks", "output_size", "cnn_module_kernel", "right_context")} == {
        "head": "4", "num_blocks": "2", "output_size": "144", "cnn_module_kernel": "15", "right_context": "6"}
    lines = (out / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "<blank> 0" and lines[-1] == "<eos> 59" and len(lines) == 60
    assert json.loads((out / "meta.json").read_text())["runtime"] == "onnx"


def test_every_program_agrees_with_paddle_inference(exported, backends):
    """Encoder outputs (padded batches), CTC and decoder log-probs within 1e-4 of Paddle Inference."""
    _, fp32, _ = exported
    paddle_backend, onnx_backend = backends
    rng = np.random.default_rng(1)
    for lengths in ([120], [211, 64, 150]):
        feats, lens = random_batch(rng, lengths)
        ref, got = paddle_backend.encode(feats, lens), onnx_backend.encode(feats, lens)
        np.testing.assert_array_equal(got[1], ref[1])
        for i, n in enumerate(ref[1]):
            np.testing.assert_allclose(got[0][i, :n], ref[0][i, :n], atol=ATOL, rtol=0)
            np.testing.assert_allclose(got[2][i, :n], ref[2][i, :n], atol=ATOL, rtol=0)
        np.testing.assert_allclose(onnx_backend.ctc_activation(ref[0]), paddle_backend.ctc_activation(ref[0]),
                                   atol=ATOL, rtol=0)
    hyps = rng.integers(1, 59, (6, 5)).astype(np.int64)
    hyps[:, 0] = 59
    hyp_lens = np.asarray([5, 3, 1, 5, 2, 4], np.int64)
    feats, lens = random_batch(rng, [150, 97])
    enc, enc_lens, _ = paddle_backend.encode(feats, lens)
    ref = Predictor(fp32 / "decoder", use_mkldnn=False).run(
        {"hyps": hyps, "hyps_lengths": hyp_lens, "encoder_out": enc, "encoder_lengths": enc_lens})[0]
    got = onnx_backend.decode(hyps, hyp_lens, enc, enc_lens)
    for i, n in enumerate(hyp_lens):
        np.testing.assert_allclose(got[i, :n], ref[i, :n], atol=ATOL, rtol=0)
    assert onnx_backend.decoder_step_cache == paddle_backend.decoder_step_cache == (1, 4, 72)
    cache = rng.standard_normal((1, 6, 4, 4, 72)).astype(np.float32)
    cache[:, :, :, 0] = 0.0
    for ref, got in zip(*(b.decode_step(hyps[:, 3:4], cache, enc, enc_lens) for b in backends)):
        assert ref.shape == got.shape and ref.shape in ((6, 60), (1, 6, 4, 1, 72))
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [-1, 4])
def test_onnx_runtime_gives_the_paddle_inference_hypotheses_for_every_method(backends, chunk):
    conf = DecodeConfig(beam_size=4, decoding_chunk_size=chunk)
    feats, lens = random_batch(np.random.default_rng(4), [260, 190, 150])
    theirs = Recognizer(backends[0], conf).recognize(feats, lens)
    ours = Recognizer(backends[1], conf).recognize(feats, lens)
    assert set(ours) == set(METHODS)
    for method in METHODS:
        assert ours[method] == theirs[method], method
        assert all(len(h) > 0 for h in ours[method])


def test_streams_in_one_batch_equal_each_stream_alone(backends):
    rng = np.random.default_rng(6)
    utterances = [random_batch(rng, [260])[0][0] for _ in range(3)]
    for required in (-1, 8):
        check_streams_batched_equal_alone(backends[1], utterances, 4, required, atol=ATOL)


def _spins(program) -> bool:
    options = program.session.get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:  # not set: ONNX Runtime's default, spinning
        return True


def test_onnx_runtime_threads_sleep_when_the_process_asks_idle_threads_to(exported, monkeypatch):
    """`paddle-asr serve` sets KMP_BLOCKTIME=0 (cpu_settings.let_idle_threads_sleep): ONNX Runtime's
    threads must not spin there either; elsewhere they keep ONNX Runtime's default."""
    _, _, onnx_dir = exported
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    backend = OnnxU2Backend(onnx_dir)
    assert all(_spins(p) for p in (backend._encoder, backend._ctc, backend._decoder))
    monkeypatch.setenv("KMP_BLOCKTIME", "0")
    backend = OnnxU2Backend(onnx_dir)
    assert not any(_spins(p) for p in (backend._encoder, backend._ctc, backend._decoder, backend._chunk.predictor))


def test_runtime_option_finds_the_onnx_export_beside_the_bundle(exported):
    _, fp32, out = exported
    meta = json.loads((fp32 / "meta.json").read_text())
    assert isinstance(load_backend(fp32, meta, runtime="onnx"), OnnxU2Backend)
    assert isinstance(load_backend(out, json.loads((out / "meta.json").read_text())), OnnxU2Backend)
    with pytest.raises(AsrError, match="no ONNX export"):
        load_backend(fp32, {**meta, "precision": "int8"}, runtime="onnx")


def test_auto_runtime_is_onnx_runtime_for_an_fp32_bundle_with_its_export_beside(exported, tmp_path):
    """transcribe and serve default to `auto`: ONNX Runtime gives an FP32 bundle's hypotheses faster
    (bench/RESULTS.md), so it runs one whose export/onnx is beside it; INT8, a GPU, or no export
    beside stay on Paddle Inference, and stages 5/6 ("") always run what the directory holds."""
    _, fp32, _ = exported
    meta = json.loads((fp32 / "meta.json").read_text())
    assert isinstance(load_backend(fp32, meta, runtime="auto"), OnnxU2Backend)
    assert not isinstance(load_backend(fp32, meta), OnnxU2Backend)
    assert onnx_is_preferred(fp32, meta)
    assert not onnx_is_preferred(fp32, {**meta, "precision": "int8"})
    assert not onnx_is_preferred(fp32, meta, gpu=object())
    alone = tmp_path / "export" / "fp32"
    shutil.copytree(fp32, alone)
    assert not onnx_is_preferred(alone, meta) and not isinstance(load_backend(alone, meta, runtime="auto"),
                                                                   OnnxU2Backend)


def _samples(name: str, gain: float = 1.0) -> np.ndarray:
    """A fixture recording in [-1, 1], times `gain`."""
    samples, rate = soundfile.read(real_fixture(name), dtype="float32")
    assert rate == 16000
    return samples * gain


def _sherpa_fbank(samples: np.ndarray, snip_edges: bool = False) -> np.ndarray:
    """The fbank sherpa-onnx computes for a WeNet model: kaldi-native-fbank with its defaults, mel
    banks to 7600 Hz, no snip_edges."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither, opts.frame_opts.snip_edges = 0.0, snip_edges
    opts.mel_opts.num_bins, opts.mel_opts.low_freq, opts.mel_opts.high_freq = FEAT_DIM, 20.0, -400.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000.0, samples * 32768)
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]).astype(np.float64)


def _on_our_frames(energies: np.ndarray, config: FeatureConfig, keep_length: bool) -> np.ndarray:
    """What SherpaFbank does after the bank map, in NumPy: energies [T, bins] onto our frames, log."""
    k, w = snip_edges_shift(config)
    if keep_length:
        energies = np.concatenate([energies] + [energies[-1:]] * (k + 1))
    return np.log(np.maximum(energies[k:-1] * (1.0 - w) + energies[k + 1:] * w, ENERGY_FLOOR)).astype(np.float32)


def _sherpa_fbank_mapped(samples: np.ndarray, config: FeatureConfig | None = None) -> np.ndarray:
    """sherpa-onnx's fbank as model.onnx reads it inside: mapped to our banks, on our frames."""
    config = config or FeatureConfig()
    return _on_our_frames(np.exp(_sherpa_fbank(samples)) @ mel_bank_map(config, 7600.0).T, config, False)


def _sherpa_windows_encoded(backend, samples: np.ndarray, chunks: int) -> np.ndarray:
    """Our chunk encoder on the windows sherpa-onnx feeds model-streaming.onnx (chunk 16, 4 left
    chunks), each moved onto our frames as the file does inside, window by window."""
    config = FeatureConfig()
    energies = np.exp(_sherpa_fbank(samples)) @ mel_bank_map(config, 7600.0).T
    sub, state, outputs = backend.subsampling_rate, backend.new_stream_state(), []
    for i in range(chunks):
        window = energies[i * 16 * sub: i * 16 * sub + 15 * sub + backend.right_context + 1]
        y, (state,) = backend.encode_chunks(_on_our_frames(window, config, True)[None], [state], 64)
        outputs.append(y)
    return np.concatenate(outputs, axis=1)


def _greedy_text(log_probs: np.ndarray, units: list[str]) -> str:
    return "".join(units[t] for t in ctc_greedy_search(log_probs, np.asarray([log_probs.shape[1]]))[0])


def _units(onnx_dir: Path) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in (onnx_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()]


def test_the_bank_map_gives_our_fbank_from_sherpa_onnx_s(exported):
    """Our log-mel energies from sherpa-onnx's (banks to 7600 Hz), on real speech and our frames:
    a quarter of the distance between the two banks (median 0.11 against 0.43 in the log domain;
    each of our triangles is approximated, and those above 7600 Hz are extrapolated)."""
    samples = _samples(WAVS[0])
    theirs = _sherpa_fbank(samples, snip_edges=True)
    ours = compute_fbank(samples * 32768, FeatureConfig())
    mapped = np.log(np.maximum(np.exp(theirs) @ mel_bank_map(FeatureConfig(), 7600.0).T, ENERGY_FLOOR))
    mapped_diff, diff = np.median(np.abs(mapped - ours)), np.median(np.abs(theirs - ours))
    assert mapped_diff < 0.15 and mapped_diff < diff / 3


@pytest.mark.parametrize("wav", WAVS)
def test_the_offline_model_moves_sherpa_onnx_s_frames_onto_ours(wav):
    """sherpa-onnx frames without snip_edges, 120 samples before ours: the interpolated frames are
    within a third of the distance of its own frames to ours (median 0.17-0.19 against 0.55-0.57 in
    the log domain, on a model trained with its banks, `high_freq: -400`), one more frame than ours."""
    config = FeatureConfig(high_freq=-400.0)
    assert snip_edges_shift(config) == (0, 0.75) and snip_edges_shift(FeatureConfig(frame_length_ms=40)) == (1, 0.5)
    samples = _samples(wav)
    ours = compute_fbank(samples * 32768, config)
    aligned, theirs = _sherpa_fbank_mapped(samples, config), _sherpa_fbank(samples)
    assert len(aligned) == len(ours) + 1 == len(theirs) - 1
    aligned_diff, diff = np.median(np.abs(aligned[:-1] - ours)), np.median(np.abs(theirs[:-2] - ours))
    assert aligned_diff < 0.2 and aligned_diff < diff / 3


def _sherpa_streaming(out: Path, samples: np.ndarray) -> tuple[str, int]:
    """OnlineRecognizer.from_wenet_ctc (chunk 16, 4 left chunks) on model-streaming.onnx -> (text,
    chunks decoded)."""
    rec = sherpa_onnx.OnlineRecognizer.from_wenet_ctc(model=str(out / STREAMING_MODEL), tokens=str(out / TOKENS),
                                                      chunk_size=16, num_left_chunks=4)
    stream = rec.create_stream()
    stream.accept_waveform(16000, samples)
    stream.input_finished()
    chunks = 0
    while rec.is_ready(stream):
        rec.decode_stream(stream)
        chunks += 1
    return rec.get_result(stream), chunks


def _sherpa_offline(out: Path, samples: np.ndarray) -> str:
    rec = sherpa_onnx.OfflineRecognizer.from_wenet_ctc(model=str(out / OFFLINE_MODEL), tokens=str(out / TOKENS))
    stream = rec.create_stream()
    stream.accept_waveform(16000, samples)
    rec.decode_stream(stream)
    return stream.result.text


@pytest.mark.parametrize("wav", WAVS)
def test_sherpa_onnx_streaming_gives_our_streaming_greedy_hypothesis(exported, backends, wav):
    """OnlineRecognizer.from_wenet_ctc, unmodified, on model-streaming.onnx: the text of our
    chunk-by-chunk CTC greedy search (same chunk and cache) on the windows it decoded (sherpa-onnx
    runs whole chunks only), each moved onto our banks and frames as the file does."""
    _, _, out = exported
    samples = _samples(wav)
    text, chunks = _sherpa_streaming(out, samples)
    backend = backends[1]
    ours = _greedy_text(backend.ctc_activation(_sherpa_windows_encoded(backend, samples, chunks)), _units(out))
    assert chunks >= 5 and ours and text == ours


@pytest.mark.parametrize("wav", WAVS)
def test_sherpa_onnx_offline_gives_our_greedy_hypothesis(exported, backends, wav):
    """OfflineRecognizer.from_wenet_ctc, unmodified, on model.onnx: our CTC greedy text on the
    same fbank. sherpa-onnx always dithers a WeNet model's input by 1 int16 step, so the audio is
    40 dB louder, which leaves the dither no weight (an untrained model is that fragile)."""
    _, _, out = exported
    samples = _samples(wav, gain=100.0)
    feats = _sherpa_fbank_mapped(samples)
    _, _, log_probs = backends[1].encode(feats[None], np.asarray([len(feats)]))
    ours = _greedy_text(log_probs, _units(out))
    assert ours and _sherpa_offline(out, samples) == ours


class _Determinant(paddle.nn.Layer):
    """A program with an operator paddle2onnx cannot convert (pd_op.det)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = paddle.nn.Linear(4, 4)

    def forward_encoder(self, feats, feats_lengths):
        return paddle.linalg.det(self.linear(feats[:, :4, :4].reshape([-1, 4, 4]))), feats_lengths + 1


def test_a_failed_conversion_names_the_operator_and_leaves_no_export(exported, tmp_path):
    _, fp32, _ = exported
    bundle = tmp_path / "fp32"
    shutil.copytree(fp32, bundle)
    shutil.rmtree(bundle / "encoder")
    save_function(_Determinant(), RuntimeFunction("encoder", "forward_encoder", (
        InputSpec([None, None, FEAT_DIM], "float32", "feats"), InputSpec([None], "int64", "feats_lengths"))),
        bundle / "encoder")
    with pytest.raises(AsrError, match=r"pd_op\.det"):
        export_onnx(bundle, tmp_path / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32"]


def _calibration(onnx_dir: Path) -> dict:
    """Stage 6's calibration feeds, from the real fixture utterances' fbank."""
    feats = [compute_fbank(_samples(w) * 32768, FeatureConfig()) for w in WAVS]
    return {"encoder.onnx": lambda: ({"feats": f[None], "feats_lengths": np.asarray([len(f)])} for f in feats),
            "encoder_chunk.onnx": lambda: OnnxU2Backend(onnx_dir).chunk_program_feeds(feats, 16)}


def test_int8_export_quantizes_the_encoder_and_decodes(exported, backends, tmp_path):
    """Stage 6's ONNX INT8: dynamic INT8 MatMul in the encoder files (WeNet's metadata kept), the
    subsampling's second convolution static INT8 in our runtime's files (calibrated), the first
    FP32; the decoder left FP32; ONNX Runtime and sherpa-onnx decode it, close to FP32."""
    _, _, out = exported
    int8 = tmp_path / "onnx_int8"
    files = ["encoder.onnx", "encoder_chunk.onnx", OFFLINE_MODEL, STREAMING_MODEL]
    assert quantize_onnx_export(out, int8, ["encoder"], _calibration(out)) == files
    for name in files:
        ops = [n.op_type for n in onnx.load(str(int8 / name)).graph.node]
        assert "MatMulInteger" in ops, name
        fp32_convs = [n.op_type for n in onnx.load(str(out / name)).graph.node].count("Conv")
        static = len(static_convolutions(out / name))
        assert static == 1, name  # Conv2dSubsampling4: its second convolution
        assert ops.count("QLinearConv") == (static if name in ("encoder.onnx", "encoder_chunk.onnx") else 0), name
        assert ops.count("Conv") == fp32_convs - ops.count("QLinearConv"), name
    assert _io(out / OFFLINE_MODEL)[2].items() <= _io(int8 / OFFLINE_MODEL)[2].items()
    assert (int8 / "decoder.onnx").read_bytes() == (out / "decoder.onnx").read_bytes()
    assert json.loads((int8 / "meta.json").read_text())["precision"] == "int8"
    feats, lens = random_batch(np.random.default_rng(7), [260, 190])
    ref = backends[1].encode(feats, lens)[2].argmax(-1)
    got = OnnxU2Backend(int8).encode(feats, lens)[2].argmax(-1)
    agree = np.mean([np.mean(ref[i, :n] == got[i, :n]) for i, n in enumerate(backends[1].encode(feats, lens)[1])])
    assert agree > 0.8, agree
    samples = _samples(WAVS[0])
    assert _sherpa_offline(int8, samples) and _sherpa_streaming(int8, samples)[0]
    # sherpa-onnx's files: their bank map stays FP32, and they agree with FP32 as the encoder does.
    for name in (OFFLINE_MODEL, STREAMING_MODEL):
        fp32_matmuls = energy_matmuls(out / name)
        assert len(fp32_matmuls) == 1, name
        assert [n.op_type for n in onnx.load(str(int8 / name)).graph.node if n.name in fp32_matmuls] == ["MatMul"]
    x = _sherpa_fbank(_samples(WAVS[1], gain=100.0)).astype(np.float32)[None]  # as sherpa-onnx feeds it
    feeds = {"x": x, "x_lens": np.asarray([x.shape[1]], np.int64)}
    ref, got = (ort.InferenceSession(str(d / OFFLINE_MODEL)).run(None, feeds)[0][0].argmax(-1) for d in (out, int8))
    assert np.mean(ref == got) > 0.8, np.mean(ref == got)


@pytest.fixture(scope="module")
def u2pp_export(tmp_path_factory):
    """PaddleSpeech's U2++ golden model (tests/fixtures/paddlespeech/chunk_conformer_u2pp) exported to
    ONNX, without sherpa-onnx's files (they hold the encoder alone, which U2++ leaves as it is)."""
    root = tmp_path_factory.mktemp("u2pp")
    fp32 = export_golden(*import_golden(U2PP, root / "exp"), root / "fp32")
    export_onnx(fp32, root / "onnx")
    return fp32, root / "onnx"


def test_a_u2pp_decoder_onnx_returns_both_directions_as_paddle_inference_and_paddlespeech(u2pp_export, tmp_path):
    """decoder.onnx's second output is the right-to-left decoder's (WeNet's r_score): on the golden
    n-best both directions are within 1e-4 of Paddle Inference and of PaddleSpeech; ONNX Runtime's
    dynamic INT8 of the decoder keeps both outputs."""
    fp32, onnx_dir = u2pp_export
    assert _io(onnx_dir / "decoder.onnx")[:2] == (["hyps", "hyps_lengths", "encoder_out", "encoder_lengths"],
                                                  ["decoder_log_probs", "r_decoder_log_probs"])
    _, g = golden(U2PP)
    lengths = g["decoder_hyps_lens"] + 1
    feeds = (g["decoder_in"], lengths, g["encoder_out"], np.asarray([g["encoder_out"].shape[1]], np.int64))
    ref = load_backend(fp32, json.loads((fp32 / "meta.json").read_text())).decode_bidirectional(*feeds)
    ours = OnnxU2Backend(onnx_dir)
    assert ours.bidirectional and ours.reverse_weight == 0.3
    got = ours.decode_bidirectional(*feeds)
    for r, o, key in zip(ref, got, ("decoder_log_probs", "decoder_r_log_probs")):
        for i, n in enumerate(lengths):
            np.testing.assert_allclose(o[i, :n], r[i, :n], atol=ATOL, rtol=0)
            np.testing.assert_allclose(o[i, :n], g[key][i, :n], atol=ATOL, rtol=0)
    assert quantize_onnx_export(onnx_dir, tmp_path / "int8", ["decoder"]) == ["decoder.onnx", "decoder_step.onnx"]
    int8 = OnnxU2Backend(tmp_path / "int8").decode_bidirectional(*feeds)
    assert all(a.shape == b.shape and np.abs(a - b).max() > 1e-6 for a, b in zip(int8, got))


@pytest.mark.parametrize("mode", list(golden(U2PP)[0]["modes"]))
def test_onnx_runtime_gives_paddlespeech_s_u2pp_hypotheses(u2pp_export, mode):
    """Every method, over the whole utterance and chunk by chunk, rescoring with and without the
    right-to-left decoder."""
    check_paddlespeech_hypotheses(OnnxU2Backend(u2pp_export[1]), U2PP, mode)


def test_transcribe_runs_the_onnx_export(exported):
    """`paddle-asr transcribe` on the ONNX directory (ONNX Runtime), and on the Paddle bundle with
    --runtime onnx: the same transcript, streaming too."""
    _, fp32, out = exported
    wav = str(real_fixture(WAVS[0]))

    def transcribe(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "transcribe", *args, wav],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    direct = transcribe("--bundle", str(out), "--method", "ctc_greedy_search")
    assert direct.split(maxsplit=1)[1] and direct == transcribe("--bundle", str(fp32), "--runtime", "onnx",
                                                                "--method", "ctc_greedy_search")
    streamed = transcribe("--bundle", str(out), "--method", "attention_rescoring", "--chunk_size", "4")
    assert streamed == transcribe("--bundle", str(fp32), "--runtime", "paddle", "--method", "attention_rescoring",
                                  "--chunk_size", "4")


DS2_MODELS = {"offline_gru": ("bidirect", True), "online_lstm": ("forward", False), "online_gru": ("forward", True)}


@pytest.fixture(scope="module")
def ds2_exports(tmp_path_factory) -> dict[str, tuple]:
    """{name: (Paddle Inference backend, ONNX Runtime backend)} of small DeepSpeech2 models."""
    from tests.test_export_deepspeech2 import FEAT_DIM as DS2_DIM
    from tests.test_export_deepspeech2 import build_small_ds2, write_vocab

    vocab = write_vocab(tmp_path_factory.mktemp("ds2_vocab") / "vocab.txt")
    out = {}
    for name, (direction, use_gru) in DS2_MODELS.items():
        config, model = build_small_ds2(direction, use_gru)
        root = tmp_path_factory.mktemp(name)
        diffs = export_model(model, DS2_DIM, root / "fp32")
        write_bundle_files(root / "fp32", config, vocab, model, checkpoint="test", functions=sorted(diffs))
        assert not {"model.onnx", "model-streaming.onnx"} & set(export_onnx(root / "fp32", root / "onnx"))
        meta = json.loads((root / "fp32" / "meta.json").read_text())
        out[name] = (load_backend(root / "fp32", meta), load_backend(root / "fp32", meta, runtime="onnx"))
    return out


@pytest.mark.parametrize("name", DS2_MODELS)
def test_deepspeech2_on_onnx_runtime_agrees_with_paddle_inference(ds2_exports, name):
    """Encoder outputs within 1e-4 on a padded batch of real speech (a bidirectional RNN runs one
    utterance at a time), and the same CTC hypotheses, full and (online models) chunk by chunk."""
    from tests.test_export_deepspeech2 import real_batch

    paddle_backend, onnx_backend = ds2_exports[name]
    feats, lens = real_batch()
    ref, got = paddle_backend.encode(feats, lens), onnx_backend.encode(feats, lens)
    np.testing.assert_array_equal(got[1], ref[1])
    for i, n in enumerate(ref[1]):
        np.testing.assert_allclose(got[0][i, :n], ref[0][i, :n], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got[2][i, :n], ref[2][i, :n], atol=ATOL, rtol=0)
    for chunk in (-1, 4) if onnx_backend.supports_streaming else (-1,):
        conf = DecodeConfig(methods=["ctc_greedy_search", "ctc_prefix_beam_search"], beam_size=4,
                            decoding_chunk_size=chunk)
        ours, theirs = (Recognizer(b, conf).recognize(feats, lens) for b in (onnx_backend, paddle_backend))
        assert ours == theirs and all(ours["ctc_greedy_search"])


@pytest.mark.parametrize("name", ["online_lstm", "online_gru"])
def test_deepspeech2_streams_in_one_batch_equal_each_stream_alone(ds2_exports, name):
    from tests.test_export_deepspeech2 import utterance

    feats = utterance()
    check_streams_batched_equal_alone(ds2_exports[name][1], [feats[:300], feats[126:], feats[60:360]], 4, -1,
                                      atol=ATOL)


def test_sherpa_check_reports_sherpa_onnx_beside_our_search(exported, tmp_path):
    """Stage 5's `paddle-asr sherpa-check` on two real recordings: sherpa-onnx offline and streaming
    beside our greedy search, full and chunk by chunk, in the log and a JSON file."""
    _, _, out = exported
    manifest = tmp_path / "data.list"
    manifest.write_text("".join(json.dumps({"key": f"u{i}", "wav": str(real_fixture(w)), "text": "一丁七"}) + "\n"
                                for i, w in enumerate(WAVS)), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "sherpa-check", "--onnx", str(out), "--data",
                           str(manifest), "--out", str(tmp_path / "sherpa.json")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"sherpa-onnx on {out}: offline: sherpa-onnx CER" in proc.stdout
    assert f"sherpa-onnx on {out}: streaming, chunk 16, 4 left chunks: sherpa-onnx CER" in proc.stdout
    report = json.loads((tmp_path / "sherpa.json").read_text())
    assert report["utterances"] == 2
    assert set(report["results"]) == {"ours_full", "ours_streaming", "sherpa_offline", "sherpa_streaming"}
    assert all(r["n"] == 6 and r["metric"] == "CER" for r in report["results"].values())
    texts = report["texts"]
    assert set(texts) == set(report["results"]) and all(set(t) == {"u0", "u1"} for t in texts.values())
    for mode, ours, theirs in (("offline", "ours_full", "sherpa_offline"), ("streaming", "ours_streaming",
                                                                         "sherpa_streaming")):
        o = score(texts[ours], texts[theirs], char=True, verbose=0).overall
        assert report["disagreement"][mode] == round(100 * o.errors / max(o.n, 1), 2)
        assert f"its text differs from ours by {report['disagreement'][mode]:.2f} % of our characters" in proc.stdout


def test_int8_export_of_the_decoder_scores_as_fp32(exported, backends, tmp_path):
    """`--int8_functions encoder,decoder` on ONNX: the decoder's MatMuls dynamic INT8 (its output
    layer included), its log-probabilities of every hypothesis token near FP32's, and the same
    hypothesis ranked first for each utterance by their sums (what rescoring picks)."""
    model, _, out = exported
    int8 = tmp_path / "onnx_int8"
    assert quantize_onnx_export(out, int8, ["decoder"]) == ["decoder.onnx", "decoder_step.onnx"]
    for name in ("decoder.onnx", "decoder_step.onnx"):
        assert "MatMulInteger" in [n.op_type for n in onnx.load(str(int8 / name)).graph.node]
    # both INT8: attention search steps on the INT8 step program
    assert OnnxU2Backend(int8).decoder_step_cache == (1, 4, 72)
    feeds = parity_inputs(model, FEAT_DIM)["decoder"]
    args = [feeds[k] for k in ("hyps", "hyps_lengths", "encoder_out", "encoder_lengths")]
    ref, got = backends[1]._run_decoder(*args)[0], OnnxU2Backend(int8)._run_decoder(*args)[0]
    hyps, lengths = feeds["hyps"], feeds["hyps_lengths"]
    rows = [(i, j) for i, n in enumerate(lengths) for j in range(int(n) - 1)]
    diff = max(abs(float(ref[i, j, hyps[i, j + 1]] - got[i, j, hyps[i, j + 1]])) for i, j in rows)
    assert diff < DECODER_INT8_ATOL, diff
    score = [lambda lp, i=i: sum(float(lp[i, j, hyps[i, j + 1]]) for j in range(int(lengths[i]) - 1))
             for i in range(len(hyps))]
    for first in range(0, len(hyps), 3):  # three hypotheses per utterance
        group = range(first, first + 3)
        assert max(group, key=lambda i: score[i](ref)) == max(group, key=lambda i: score[i](got))
