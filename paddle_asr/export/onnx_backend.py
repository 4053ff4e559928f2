"""ONNX Runtime as a second runtime for an exported model (U2 or DeepSpeech2): the ONNX export
(`export.onnx`) behind the same `decode.recognizer.Backend` as Paddle Inference, so every search, the
streaming encoder and the server run on it unchanged.

The chunk program is our batched one (`encoder_chunk.onnx`), gathered and scattered by the same
`U2ChunkProgram` / `DeepSpeech2ChunkProgram` as on Paddle Inference. ONNX Runtime builds no kernels
per input shape, so inputs are not padded to length buckets here.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from paddle_asr.cpu_settings import idle_threads_spin
from paddle_asr.errors import AsrError
from paddle_asr.export.backend import require_chunk_version, require_meta
from paddle_asr.export.bundle import META
from paddle_asr.export.deepspeech2 import DeepSpeech2ChunkProgram, DeepSpeech2Streams
from paddle_asr.export.onnx import CHUNK, ENCODER
from paddle_asr.export.u2 import U2DecoderProgram, U2Streams, decoder_directions, decoder_step_cache


class OrtProgram:
    """One ONNX file on ONNX Runtime's CPU provider: ``run({input name: array}) -> [outputs]``."""

    def __init__(self, path: Path, num_threads: int = 2) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise AsrError(f"{path} does not exist; export the model to ONNX again with stage 4")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # paddle2onnx leaves unused initializers, which ORT warns about
        if not idle_threads_spin():
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if int8_products_saturate():
            opts.add_session_config_entry("session.x64quantprecision", "1")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.path} needs inputs {missing}; got {sorted(feeds)}")
        return self.session.run(None, {n: np.ascontiguousarray(feeds[n]) for n in self.input_names})


@functools.cache
def int8_products_saturate() -> bool:
    """Whether ONNX Runtime's INT8 matrix products (8-bit unsigned activations by signed weights, as
    our dynamic INT8 export has them) saturate on this CPU. Without VNNI (AVX2 CPUs such as AMD Zen 3,
    AVX-512 before Cascade Lake) its kernels add pairs of products in 16 bits (vpmaddubsw), which
    clamp: the INT8 decoder's log-probabilities then moved 3.2 from FP32's on the test model instead of
    0.18. ONNX Runtime's session option `session.x64quantprecision` makes such CPUs use exact
    unsigned-by-unsigned products instead (17 % slower there); on a CPU with VNNI the same option
    would cost 85 %, so the kernels themselves are asked, one product of 64 pairs of 255 x 127,
    rather than /proc/cpuinfo (`cpu_settings.cpu_has_vnni`): the answer is then what ONNX Runtime's
    own dispatch does, on any CPU and under bench/avx2_only.py."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 1])],
        [helper.make_tensor("b", TensorProto.INT8, [k, 1], [127] * k)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"a": np.full((4, k), 255, np.uint8)})
    return bool((y != k * 255 * 127).any())


def is_onnx_export(model_dir: Path) -> bool:
    return (Path(model_dir) / ENCODER).is_file()


def onnx_export_of(bundle: Path, meta: dict) -> Path:
    """The ONNX export stage 4 (FP32) or stage 6 (INT8) wrote beside the Paddle bundle `bundle`."""
    bundle = Path(bundle)
    if is_onnx_export(bundle):
        return bundle
    target = bundle.parent / ("onnx_int8" if meta.get("precision") == "int8" else "onnx")
    if not is_onnx_export(target):
        stage = "stage 6 (INT8)" if meta.get("precision") == "int8" else "stage 4 (export)"
        raise AsrError(f"--runtime onnx: {target} holds no ONNX export of {bundle}; run {stage} again, which "
                       "writes it beside the Paddle programs")
    return target


class OnnxBackend:
    """What both families' ONNX backends share: the encoder, CTC and chunk programs."""

    _chunk = None
    bidirectional = False  # a U2++ export's decoder.onnx gives both directions (export.u2)
    reverse_weight = 0.0
    # paddle2onnx's bidirectional RNN reads padded rows as if they were full length, so such an
    # encoder runs one utterance at a time (DeepSpeech2 offline; padding is exact everywhere else).
    _one_at_a_time = False

    def __init__(self, model_dir: Path, meta: dict | None, num_threads: int) -> None:
        self.model_dir = Path(model_dir)
        meta = meta if meta is not None else json.loads((self.model_dir / META).read_text(encoding="utf-8"))
        require_meta(self.model_dir, meta, ("subsampling_rate", "right_context"))
        self.meta, self.num_threads = meta, num_threads
        self.subsampling_rate, self.right_context = int(meta["subsampling_rate"]), int(meta["right_context"])
        self._encoder = OrtProgram(self.model_dir / ENCODER, num_threads)
        self._ctc = OrtProgram(self.model_dir / "ctc_activation.onnx", num_threads)
        self.supports_streaming = bool(meta.get("supports_streaming")) and (self.model_dir / CHUNK).is_file()
        if self.supports_streaming:
            require_chunk_version(self.model_dir, meta)

    def encode(self, feats, lengths):
        feats, lengths = np.asarray(feats, np.float32), np.asarray(lengths, np.int64)
        if self._one_at_a_time and len(lengths) > 1:
            rows = [self.encode(feats[i:i + 1, :n], lengths[i:i + 1]) for i, n in enumerate(lengths)]
            return tuple(_stack_padded([r[k] for r in rows]) for k in range(3))
        enc, enc_lengths, log_probs = self._encoder.run({"feats": feats, "feats_lengths": lengths})
        keep = int(enc_lengths.max()) if len(enc_lengths) else 0
        return enc[:, :keep], enc_lengths.astype(np.int64), log_probs[:, :keep]

    def ctc_activation(self, encoder_out):
        return self._ctc.run({"encoder_out": np.asarray(encoder_out, np.float32)})[0]

    def encode_chunks(self, xs: np.ndarray, states: list, required_cache_size: int) -> tuple[np.ndarray, list]:
        return self._chunk.encode_chunks(xs, states, required_cache_size)


def _stack_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Rows of batch 1 (lengths [1], or [1, t, d] outputs) as one batch, zero-padded along time."""
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    out = np.zeros((len(arrays), max(a.shape[1] for a in arrays), *arrays[0].shape[2:]), arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[1]] = a[0]
    return out


class OnnxU2Backend(U2DecoderProgram, U2Streams, OnnxBackend):
    """A U2 model's ONNX export on ONNX Runtime: encoder, CTC, attention decoder and, for a
    streaming model, many streams' chunks at a time with per-stream caches."""

    has_decoder = True
    skip_finished = True  # no per-shape kernel builds: fewer decoder rows is all gain

    def __init__(self, model_dir: Path, meta: dict | None = None, *, num_threads: int = 2) -> None:
        super().__init__(model_dir, meta, num_threads)
        meta = self.meta
        require_meta(self.model_dir, meta, ("sos", "eos", "att_cache_shape", "cnn_cache_shape"))
        self.sos, self.eos = int(meta["sos"]), int(meta["eos"])
        self.bidirectional, self.reverse_weight = decoder_directions(meta)
        self._decoder = OrtProgram(self.model_dir / "decoder.onnx", num_threads)
        self.decoder_step_cache = decoder_step_cache(self.model_dir, meta, set(meta.get("onnx_int8_files", [])),
                                                     ".onnx")
        self._num_threads = num_threads
        if self.supports_streaming:
            self._set_up_streams(meta, OrtProgram(self.model_dir / CHUNK, num_threads))

    def _run_decoder(self, hyps, hyps_lengths, encoder_out, encoder_lengths) -> list[np.ndarray]:
        return self._decoder.run({
            "hyps": np.asarray(hyps, np.int64), "hyps_lengths": np.asarray(hyps_lengths, np.int64),
            "encoder_out": np.asarray(encoder_out, np.float32),
            "encoder_lengths": np.asarray(encoder_lengths, np.int64),
        })

    def _load_decoder_step(self) -> OrtProgram:
        return OrtProgram(self.model_dir / "decoder_step.onnx", self._num_threads)


class OnnxDeepSpeech2Backend(DeepSpeech2Streams, OnnxBackend):
    """A DeepSpeech2 model's ONNX export on ONNX Runtime: CTC only, and for the online model
    chunk-by-chunk streaming with the recurrent states carried over."""

    has_decoder = False
    decoder_step_cache = None
    sos = eos = None
    skip_finished = True  # only read by attention search, which needs a decoder

    def __init__(self, model_dir: Path, meta: dict | None = None, *, num_threads: int = 2) -> None:
        super().__init__(model_dir, meta, num_threads)
        self._one_at_a_time = self.meta.get("rnn_direction") != "forward"
        if self.supports_streaming:
            require_meta(self.model_dir, self.meta, ("state_names", "state_shape"))
            self._state_shape = tuple(self.meta["state_shape"])
            self._chunk = DeepSpeech2ChunkProgram(OrtProgram(self.model_dir / CHUNK, num_threads),
                                                  list(self.meta["state_names"]))


ONNX_BACKENDS = {"u2": OnnxU2Backend, "deepspeech2": OnnxDeepSpeech2Backend}


def load_onnx_backend(model_dir: Path, meta: dict, num_threads: int = 2) -> OnnxBackend:
    """The ONNX Runtime backend of the ONNX export in `model_dir` (meta.json `meta`)."""
    name = meta.get("model", "u2")
    if name not in ONNX_BACKENDS:
        raise AsrError(f"{model_dir}/meta.json: model {name} has no ONNX runtime; known: {', '.join(ONNX_BACKENDS)}")
    return ONNX_BACKENDS[name](model_dir, meta, num_threads=num_threads)
