"""Export a model as Paddle Inference programs, one per runtime function (legacy ``.pdmodel``).

For a U2 model:

    <out>/encoder/         forward_encoder: feats [B, T, D], feats_lengths [B]
                           -> encoder_out [B, T', d], encoder_lengths [B], ctc_log_probs [B, T', V]
    <out>/encoder_chunk/   forward_encoder_chunk (streaming models only): xs [1, T, D], offset [1],
                           required_cache_size [1], att_cache [L, H, t, 2*d_k], cnn_cache [L, 1, d, k-1]
                           -> chunk_out [1, t', d], att_cache, cnn_cache
    <out>/ctc_activation/  encoder_out [B, T', d] -> ctc_log_probs [B, T', V]
    <out>/decoder/         forward_attention_decoder: hyps [N, U], hyps_lengths [N], encoder_out
                           [N, T', d], encoder_lengths [N] -> decoder log-probs [N, U, V]

A DeepSpeech2 model gets encoder, encoder_chunk (with recurrent states) and ctc_activation: see
`paddle_asr.export.deepspeech2`. Every program is checked against the dynamic graph before the
directory is moved into place.

Why separate programs: Paddle Inference runs one program per predictor with its own parameter
file, and PaddleSlim quantizes one program at a time (the encoder is where INT8 pays).

Why a *legacy* program: Paddle 3 saves PIR programs (``model.json``) by default, but PaddleSlim 2.6
``quant_post_static`` only understands the legacy ``ProgramDesc`` and Paddle Inference only runs
the oneDNN INT8 passes on the legacy IR. So the FP32 model we ship is the same legacy program the
INT8 model is derived from. The loaders accept either form (``export_model(..., pir=True)``).

Why no child process: ``paddle.pir_utils.DygraphOldIrGuard`` performs the full switch to the old IR
(flag, dtype binding, Program aliases) and restores PIR on exit; setting ``FLAGS_enable_pir_api=0``
after ``import paddle`` is not enough.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle.static import InputSpec

from paddle_asr.artifacts import atomic_directory
from paddle_asr.models.deepspeech2 import DeepSpeech2Model

MODEL_FILENAME = "model.pdmodel"
PARAMS_FILENAME = "model.pdiparams"
# The exported log-probs must match the dynamic graph this closely.
PARITY_ATOL = 1e-3
# Lengths of the random parity batch: two different lengths so that padding masks are exercised;
# long enough for x8 subsampling.
PARITY_LENGTHS = (173, 96)


class ExportError(RuntimeError):
    """Raised when an exported program does not reproduce the dygraph model."""


@dataclass(frozen=True)
class RuntimeFunction:
    name: str  # directory under the export
    method: str  # method of `layer`
    inputs: tuple[InputSpec, ...]
    # The layer whose method is exported; None: the model itself. A small adapter layer when no
    # model method has the program's exact signature (DeepSpeech2's chunk step).
    layer: paddle.nn.Layer | None = None

    def owner(self, model: paddle.nn.Layer) -> paddle.nn.Layer:
        return model if self.layer is None else self.layer


def runtime_functions(model, feat_dim: int) -> list[RuntimeFunction]:
    """The functions a U2 runtime needs; `encoder_chunk` only when the model can stream."""
    enc = model.encoder
    d, layers, heads = enc.output_size, len(enc.encoders), enc.conf.attention_heads
    fns = [
        RuntimeFunction("encoder", "forward_encoder", (
            InputSpec([None, None, feat_dim], "float32", "feats"), InputSpec([None], "int64", "feats_lengths"))),
        RuntimeFunction("ctc_activation", "ctc_activation", (InputSpec([None, None, d], "float32", "encoder_out"),)),
        RuntimeFunction("decoder", "forward_attention_decoder", (
            InputSpec([None, None], "int64", "hyps"), InputSpec([None], "int64", "hyps_lengths"),
            InputSpec([None, None, d], "float32", "encoder_out"), InputSpec([None], "int64", "encoder_lengths"))),
    ]
    if enc.supports_streaming:
        fns.append(RuntimeFunction("encoder_chunk", "forward_encoder_chunk", (
            InputSpec([1, None, feat_dim], "float32", "xs"), InputSpec([1], "int64", "offset"),
            InputSpec([1], "int64", "required_cache_size"),
            InputSpec([layers, heads, None, 2 * (d // heads)], "float32", "att_cache"),
            InputSpec([layers, 1, d, max(enc.cnn_cache_frames, 1)], "float32", "cnn_cache"))))
    return fns


class _Wrapper(paddle.nn.Layer):
    """Expose one model method as ``forward``: ``paddle.jit.save`` saves a Layer's forward, and
    dy2static needs the arguments spelled out (no ``*args``), hence one small class per arity."""

    def __init__(self, model: paddle.nn.Layer, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method


class _Wrapper1(_Wrapper):
    def forward(self, a):
        return getattr(self.model, self.method)(a)


class _Wrapper2(_Wrapper):
    def forward(self, a, b):
        return getattr(self.model, self.method)(a, b)


class _Wrapper3(_Wrapper):
    def forward(self, a, b, c):
        return getattr(self.model, self.method)(a, b, c)


class _Wrapper4(_Wrapper):
    def forward(self, a, b, c, d):
        return getattr(self.model, self.method)(a, b, c, d)


class _Wrapper5(_Wrapper):
    def forward(self, a, b, c, d, e):
        return getattr(self.model, self.method)(a, b, c, d, e)


_WRAPPERS = {1: _Wrapper1, 2: _Wrapper2, 3: _Wrapper3, 4: _Wrapper4, 5: _Wrapper5}


def save_function(model: paddle.nn.Layer, fn: RuntimeFunction, out_dir: Path, *, pir: bool = False) -> None:
    """Trace `fn` and write `out_dir/model.{pdmodel|json}` + `model.pdiparams`."""
    from paddle_asr.export.inference import quiet_output

    wrapper = _WRAPPERS[len(fn.inputs)](fn.owner(model), fn.method)
    wrapper.eval()
    guard = contextlib.nullcontext() if pir else paddle.pir_utils.DygraphOldIrGuard()
    # quiet_output: jit.save logs "New Executor is Running" via glog; shown only if the save fails.
    with guard, quiet_output():
        static_layer = paddle.jit.to_static(wrapper, input_spec=list(fn.inputs), full_graph=True)
        paddle.jit.save(static_layer, str(Path(out_dir) / "model"))
    program = Path(out_dir) / ("model.json" if pir else MODEL_FILENAME)
    if not program.is_file() or not (Path(out_dir) / PARAMS_FILENAME).is_file():
        raise ExportError(f"paddle.jit.save did not write {program.name} and {PARAMS_FILENAME} in {out_dir}")


def parity_inputs(model, feat_dim: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random but realistic inputs for each function, to compare dygraph and the predictor."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(PARITY_LENGTHS, dtype=np.int64)
    feats = rng.standard_normal((len(lengths), int(lengths.max()), feat_dim)).astype(np.float32) * 3 + 10
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    enc_len = np.asarray([int(model.encoder.output_length(int(n))) for n in lengths], np.int64)
    d = model.encoder.output_size
    enc_out = rng.standard_normal((len(lengths), int(enc_len.max()), d)).astype(np.float32)
    # Three hypotheses per utterance (rows grouped by utterance), as beam search feeds the decoder.
    hyps = rng.integers(1, model.vocab_size - 1, (3 * len(lengths), 7)).astype(np.int64)
    hyps[:, 0] = model.sos
    hyps_lengths = np.asarray([7, 4, 1, 6, 2, 7], np.int64)
    for i, n in enumerate(hyps_lengths):
        hyps[i, n:] = model.eos
    return {
        "encoder": {"feats": feats, "feats_lengths": lengths},
        "ctc_activation": {"encoder_out": enc_out},
        "decoder": {"hyps": hyps, "hyps_lengths": hyps_lengths, "encoder_out": enc_out, "encoder_lengths": enc_len},
    }


def _valid_max_diff(name: str, ref: list[np.ndarray], got: list[np.ndarray], feeds: dict) -> float:
    """Largest difference over the frames/tokens inside each row's length (padding is undefined)."""
    if name == "encoder":
        lengths = ref[1]
        if not np.array_equal(lengths, got[1]):
            raise ExportError(f"encoder lengths differ: {got[1]} vs {lengths}")
        rows = [(r[i, :n], g[i, :n]) for r, g in ((ref[0], got[0]), (ref[2], got[2])) for i, n in enumerate(lengths)]
    elif name == "decoder":
        rows = [(ref[0][i, :n], got[0][i, :n]) for i, n in enumerate(feeds["hyps_lengths"])]
    else:
        rows = list(zip(ref, got))
    diffs = [float(np.abs(r - g[tuple(slice(0, s) for s in r.shape)]).max()) for r, g in rows if r.size]
    return max(diffs) if diffs else 0.0


def check_function_parity(model, fn: RuntimeFunction, program_dir: Path, feeds: dict[str, np.ndarray]) -> float:
    from paddle_asr.export.inference import Predictor

    with paddle.no_grad():
        ref = getattr(fn.owner(model), fn.method)(*[paddle.to_tensor(feeds[s.name]) for s in fn.inputs])
    ref = [t.numpy() for t in (ref if isinstance(ref, (tuple, list)) else [ref])]
    got = Predictor(program_dir).run(feeds)
    if len(got) != len(ref):
        raise ExportError(f"{program_dir}: {len(got)} outputs, the model gives {len(ref)}")
    diff = _valid_max_diff(fn.name, ref, got, feeds)
    if not np.isfinite(diff) or diff >= PARITY_ATOL:
        raise ExportError(f"{program_dir} disagrees with the dynamic graph: max |diff| = {diff:.3g} (limit {PARITY_ATOL})")
    return diff


def check_streaming_parity(model, program_dir: Path, feat_dim: int) -> float:
    """Three chunks through the exported `encoder_chunk` against the dygraph `forward_encoder_chunk`."""
    from paddle_asr.decode.recognizer import chunk_windows
    from paddle_asr.export.inference import Predictor

    enc = model.encoder
    sub, right_context, chunk = enc.embed.subsampling_rate, enc.embed.right_context, 4
    rng = np.random.default_rng(1)
    num_frames = 3 * chunk * sub + right_context + 1  # three chunks
    feats = (rng.standard_normal((1, num_frames, feat_dim)) * 3 + 10).astype(np.float32)
    predictor = Predictor(program_dir, streaming=True)
    att, cnn = enc.initial_caches()
    att_d, cnn_d = paddle.to_tensor(att), paddle.to_tensor(cnn)
    offset, worst = 0, 0.0
    for start, end in chunk_windows(num_frames, sub, right_context, chunk):
        xs = feats[:, start:end]
        y, att, cnn = predictor.run({"xs": xs, "offset": np.array([offset], np.int64),
                                     "required_cache_size": np.array([-1], np.int64), "att_cache": att, "cnn_cache": cnn})
        with paddle.no_grad():
            y_d, att_d, cnn_d = model.forward_encoder_chunk(paddle.to_tensor(xs), offset, -1, att_d, cnn_d)
        worst = max(worst, float(np.abs(y - y_d.numpy()).max()), float(np.abs(att - att_d.numpy()).max()))
        offset += y.shape[1]
    if not np.isfinite(worst) or worst >= PARITY_ATOL:
        raise ExportError(f"{program_dir} disagrees with the dynamic graph chunk by chunk: max |diff| = {worst:.3g}")
    return worst


def _family(model: paddle.nn.Layer):
    """(runtime_functions, parity_inputs, check_streaming_parity) for the model's architecture."""
    if isinstance(model, DeepSpeech2Model):
        from paddle_asr.export import deepspeech2 as ds2  # imported late: it builds on this module

        return ds2.runtime_functions, ds2.parity_inputs, ds2.check_streaming_parity
    return runtime_functions, parity_inputs, check_streaming_parity


def export_model(model: paddle.nn.Layer, feat_dim: int, out_dir: Path, *, pir: bool = False) -> dict[str, float]:
    """Write every runtime function of `model` (U2 or DeepSpeech2) under `out_dir`, each verified
    against the dynamic graph before the directory is moved into place. Returns {function: max |diff|}."""
    out_dir = Path(out_dir)
    functions, inputs_of, check_chunks = _family(model)
    was_training = model.training
    model.eval()  # BatchNorm running stats, no dropout
    diffs: dict[str, float] = {}
    try:
        with atomic_directory(out_dir) as tmp_dir:
            inputs = inputs_of(model, feat_dim)
            for fn in functions(model, feat_dim):
                save_function(model, fn, tmp_dir / fn.name, pir=pir)
                try:
                    if fn.name == "encoder_chunk":
                        diffs[fn.name] = check_chunks(model, tmp_dir / fn.name, feat_dim)
                    else:
                        diffs[fn.name] = check_function_parity(model, fn, tmp_dir / fn.name, inputs[fn.name])
                except ExportError as e:
                    raise ExportError(f"export to {out_dir} rejected, nothing written: {e}") from None
    finally:
        if was_training:
            model.train()
    return diffs
