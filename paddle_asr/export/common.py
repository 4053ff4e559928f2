"""What every model family's export shares: a runtime function (one Paddle Inference program), how
it is saved, and how an exported program is checked against the dynamic graph.

Why separate programs: Paddle Inference runs one program per predictor with its own parameter
file, and PaddleSlim quantizes one program at a time (the encoder is where INT8 pays).

Why a *legacy* program: Paddle 3 saves PIR programs (``model.json``) by default, but PaddleSlim 2.6
``quant_post_static`` only understands the legacy ``ProgramDesc`` and Paddle Inference only runs
the oneDNN INT8 passes on the legacy IR. So the FP32 model we ship is the same legacy program the
INT8 model is derived from. The loaders accept either form (``save_function(..., pir=True)``).

Why no child process: ``paddle.pir_utils.DygraphOldIrGuard`` performs the full switch to the old IR
(flag, dtype binding, Program aliases) and restores PIR on exit; setting ``FLAGS_enable_pir_api=0``
after ``import paddle`` is not enough.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle.static import InputSpec

from paddle_asr.export.inference import Predictor, quiet_output

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


class _Wrapper6(_Wrapper):
    def forward(self, a, b, c, d, e, f):
        return getattr(self.model, self.method)(a, b, c, d, e, f)


_WRAPPERS = {1: _Wrapper1, 2: _Wrapper2, 3: _Wrapper3, 4: _Wrapper4, 5: _Wrapper5, 6: _Wrapper6}


def save_function(model: paddle.nn.Layer, fn: RuntimeFunction, out_dir: Path, *, pir: bool = False) -> None:
    """Trace `fn` and write `out_dir/model.{pdmodel|json}` + `model.pdiparams`."""
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


def _valid_max_diff(name: str, ref: list[np.ndarray], got: list[np.ndarray], feeds: dict) -> float:
    """Largest difference over the frames/tokens inside each row's length (padding is undefined)."""
    if name == "encoder":
        lengths = ref[1]
        if not np.array_equal(lengths, got[1]):
            raise ExportError(f"encoder lengths differ: {got[1]} vs {lengths}")
        rows = [(r[i, :n], g[i, :n]) for r, g in ((ref[0], got[0]), (ref[2], got[2])) for i, n in enumerate(lengths)]
    elif name == "decoder":  # one output, or U2++'s two directions
        rows = [(r[i, :n], g[i, :n]) for r, g in zip(ref, got) for i, n in enumerate(feeds["hyps_lengths"])]
    else:
        rows = list(zip(ref, got))
    diffs = [float(np.abs(r - g[tuple(slice(0, s) for s in r.shape)]).max()) for r, g in rows if r.size]
    return max(diffs) if diffs else 0.0


def stream_state_diff(a, b) -> float:
    """Largest difference between two streams' states (dataclasses of arrays and counters); an
    ExportError when their counters or array shapes differ."""
    worst = 0.0
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if not isinstance(x, np.ndarray):
            if x != y:
                raise ExportError(f"stream states differ: {field.name} {x} vs {y}")
        elif x.shape != y.shape:
            raise ExportError(f"stream states differ: {field.name} shape {x.shape} vs {y.shape}")
        else:
            worst = max(worst, float(np.abs(x - y).max(initial=0.0)))
    return worst


def batched_chunk_diff(program, new_state, utterances: np.ndarray, windows: list, required: int) -> float:
    """Three streams at different points of their utterances [3, T, D] (no history, 1 chunk and 3
    chunks done: different offsets and cache lengths) take their next chunk in ONE
    `program.encode_chunks` call -> the largest difference from each stream's own call alone."""
    alone, states, nexts = [], [], []
    for b, done in enumerate((0, 1, 3)):
        state = new_state()
        for start, end in windows[:done]:
            _, (state,) = program.encode_chunks(utterances[b:b + 1, start:end], [state], required)
        start, end = windows[done]
        alone.append(program.encode_chunks(utterances[b:b + 1, start:end], [state], required))
        states.append(state)
        nexts.append(utterances[b, start:end])
    batched, new_states = program.encode_chunks(np.stack(nexts), states, required)
    return max(max(float(np.abs(batched[b] - y[0]).max()), stream_state_diff(new_states[b], s))
               for b, (y, (s,)) in enumerate(alone))


def check_function_parity(model, fn: RuntimeFunction, program_dir: Path, feeds: dict[str, np.ndarray]) -> float:
    """`fn` run by Paddle Inference on `feeds` against the dynamic graph -> max |diff|; ExportError
    when it reaches PARITY_ATOL."""
    with paddle.no_grad():
        ref = getattr(fn.owner(model), fn.method)(*[paddle.to_tensor(feeds[s.name]) for s in fn.inputs])
    ref = [t.numpy() for t in (ref if isinstance(ref, (tuple, list)) else [ref])]
    got = Predictor(program_dir).run(feeds)
    if len(got) != len(ref):
        raise ExportError(f"{program_dir}: {len(got)} outputs, the model gives {len(ref)}")
    diff = _valid_max_diff(fn.name, ref, got, feeds)
    if not np.isfinite(diff) or diff >= PARITY_ATOL:
        raise ExportError(
            f"{program_dir} disagrees with the dynamic graph: max |diff| = {diff:.3g} (limit {PARITY_ATOL})")
    return diff

