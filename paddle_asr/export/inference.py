"""Paddle Inference predictors for exported (FP32) and PaddleSlim-quantized (INT8) programs."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle.inference as paddle_infer

# oneDNN caches one primitive set per input shape; with dynamic (B, T) that
# cache would grow without bound in a long-running server. Inputs are padded
# to LENGTH_BUCKET frames (below), so 32 shapes cover every batch size and
# length of a test set while keeping memory flat.
MKLDNN_CACHE_CAPACITY = 32
# Time is padded up to a multiple of this many frames before the predictor
# runs. Creating oneDNN primitives for a new shape costs more than running
# them, INT8 ones most, so with exact lengths INT8 lost to FP32; buckets bound
# the number of shapes (bench/RESULTS.md, "Figures formerly in code comments").
# Padding is masked inside the model, so results are unchanged.
LENGTH_BUCKET = 64

# Ops that oneDNN may run in INT8 (names after the fuse passes: nn.Linear ->
# fc, Conv1D/Conv2D -> fused_conv2d). Deliberately NOT the activation x
# activation attention matmuls (fused_matmul/matmul): with them INT8 greedy
# agreement with FP32 collapsed to ~12% on a conformer, versus ~97-99% with
# this list; nor elementwise/transpose/reshape ops, which only add
# quantize/dequantize reorders. An empty set would mean "every op that has a
# scale", which is exactly the broken case.
INT8_OP_TYPES: frozenset[str] = frozenset({"fc", "conv2d", "fused_conv2d", "depthwise_conv2d"})


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Hide Python warnings, logging and C++ writes to fds 1/2 for the block.

    oneDNN INT8 passes print their statistics straight to std::cerr
    (``PrettyLogDetail``, not glog, so ``disable_glog_info`` does not help)
    and PaddleSlim prints import noise and progress bars. Output goes to a
    temp file; on failure its tail is attached to the exception so the cause
    is not lost. Process-wide (fds are shared): not for concurrent threads.
    """
    old_disable = logging.root.manager.disable
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        sys.stdout.flush(), sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]

        def restore() -> None:
            # Flush Python-level buffers (tqdm '\r' lines) into the sink first.
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)

        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield
        except BaseException as exc:
            restore()
            sink.seek(0)
            tail = sink.read()[-4000:].decode(errors="replace").strip()
            if tail:
                exc.add_note(f"suppressed output (tail):\n{tail}")
            raise
        finally:
            restore()
            for fd in saved:
                os.close(fd)
            logging.disable(old_disable)


def find_model_files(model_dir: Path) -> tuple[Path, Path]:
    """Return ``(program, params)`` for a legacy (``.pdmodel``) or PIR (``.json``) export."""
    model_dir = Path(model_dir)
    params = model_dir / "model.pdiparams"
    for name in ("model.pdmodel", "model.json"):
        prog = model_dir / name
        if prog.is_file() and params.is_file():
            return prog, params
    present = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else None
    raise FileNotFoundError(
        f"no exported model in {model_dir}: expected model.pdmodel (legacy) or model.json "
        f"(PIR) next to model.pdiparams; directory contents: {present}"
    )


# oneDNN cannot build primitives for zero-size tensors ("could not construct a sub-memory"), and a
# streaming batch whose streams all start has an empty attention cache [L, B, H, 0, 2*d_k]. For the
# chunk encoder the ops that touch the cache (slice, split, concat, stack) and the position and
# padding bookkeeping on int64 (gather_nd, compare, cast) run on Paddle's plain CPU kernels; every
# compute op still runs in oneDNN (the INT8 ones too).
STREAMING_MKLDNN_OPS: frozenset[str] = frozenset({
    "matmul_v2", "matmul", "fc", "conv2d", "fused_conv2d", "depthwise_conv2d", "layer_norm", "softmax",
    "elementwise_add", "elementwise_sub", "elementwise_mul", "elementwise_div", "swish", "relu", "sigmoid",
    "transpose2", "reshape2", "unsqueeze2", "squeeze2", "scale", "glu", "fused_matmul", "fused_elementwise_add",
    "quantize", "dequantize", "requantize",
})


TENSORRT_PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class GpuInference:
    """Run a predictor on GPU `device_id`, through TensorRT when `tensorrt` names a precision.

    Written from Paddle Inference's documentation (Paddle-TRT subgraphs, legacy IR) and never run
    on this project's CPU-only CI: `require_gpu_inference` stops a CPU build with a clear message
    first. TensorRT INT8 takes its scales from the PaddleSlim model (``use_calib_mode=False``), so
    stage 6's INT8 bundle needs no TensorRT calibration. Dynamic shapes follow the documented
    "tuned" route: the first batch runs once on the plain GPU predictor with
    ``collect_shape_range_info``, and the TensorRT predictor is built from the shapes it recorded,
    rebuilding its engine when a later batch falls outside them (``allow_build_at_runtime``)."""

    device_id: int = 0
    tensorrt: str = ""  # "", fp16 or int8

    def __post_init__(self) -> None:
        if self.tensorrt not in ("", *TENSORRT_PRECISIONS):
            raise ValueError(f"TensorRT precision '{self.tensorrt}': use one of {', '.join(TENSORRT_PRECISIONS)}")


def require_gpu_inference(gpu: GpuInference) -> None:
    from paddle_asr.devices import require

    label = f"Paddle Inference with TensorRT {gpu.tensorrt.upper()}" if gpu.tensorrt else "Paddle Inference on GPU"
    require("tensorrt" if gpu.tensorrt else "cuda", label)


def _gpu_settings(config: paddle_infer.Config, gpu: GpuInference, shape_file: Path, collect: bool) -> None:
    config.enable_use_gpu(256, gpu.device_id)  # initial memory pool in MB; it grows as needed
    if collect or not gpu.tensorrt:
        if collect:
            config.collect_shape_range_info(str(shape_file))
        return
    precision = {"fp16": paddle_infer.PrecisionType.Half, "int8": paddle_infer.PrecisionType.Int8}[gpu.tensorrt]
    config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=1, min_subgraph_size=3,
                                  precision_mode=precision, use_static=False, use_calib_mode=False)
    config.enable_tuned_tensorrt_dynamic_shape(str(shape_file), True)


def make_config(
    model_dir: Path,
    *,
    num_threads: int = 2,
    use_mkldnn: bool = True,
    int8: bool = False,
    int8_op_types: Iterable[str] = INT8_OP_TYPES,
    streaming: bool = False,
    gpu: GpuInference | None = None,
    shape_file: Path | None = None,
    collect_shapes: bool = False,
) -> paddle_infer.Config:
    """Build the CPU ``Config``.

    INT8: the PaddleSlim model carries ``quantize_linear``/``dequantize_linear`` ops. Only the
    *legacy* IR pass list installed by ``enable_mkldnn_int8()`` (``quant_dequant_onednn_pass`` ->
    ``cpu_quantize_placement_pass`` -> ``cpu_quantize_pass`` -> ``cpu_quantize_squash_pass``) turns
    them into int8 oneDNN kernels; the PIR oneDNN pipeline just deletes them and runs FP32. So INT8
    needs oneDNN on, ``enable_mkldnn_int8()``, and the new IR off -- which is what Paddle 3.0.0
    picks for a ``.pdmodel`` anyway; we set it explicitly so a future default change cannot
    silently drop INT8.
    """
    prog, params = find_model_files(model_dir)
    config = paddle_infer.Config(str(prog), str(params))
    config.disable_glog_info()
    if gpu is not None:
        if prog.suffix != ".pdmodel":
            raise ValueError(f"GPU inference here uses the legacy IR: it needs model.pdmodel in {model_dir}")
        config.enable_new_ir(False)
        config.switch_ir_optim(True)
        config.enable_memory_optim()
        _gpu_settings(config, gpu, shape_file or Path(model_dir) / "shape_range.pbtxt", collect_shapes)
        return config
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(num_threads)
    config.switch_ir_optim(True)
    if prog.suffix == ".pdmodel":
        config.enable_new_ir(False)
        # Only the legacy pass list has the memory optimisation; with a PIR program Paddle 3.0.0
        # fails in create_predictor ("Not find ... memory_optimize_pass").
        config.enable_memory_optim()
    else:
        config.enable_new_ir(True)
    if use_mkldnn or int8:
        config.enable_mkldnn()
        config.set_mkldnn_cache_capacity(MKLDNN_CACHE_CAPACITY)
        if streaming:
            config.set_mkldnn_op(set(STREAMING_MKLDNN_OPS))
    else:
        config.disable_mkldnn()  # Paddle 3 turns oneDNN on by default on CPU
    if int8:
        if prog.suffix != ".pdmodel":
            raise ValueError(f"INT8 needs a legacy model.pdmodel in {model_dir}")
        config.enable_mkldnn_int8(set(int8_op_types))
    return config


class Predictor:
    """One exported program: ``run({input name: array}) -> [outputs in the function's return order]``.
    A Paddle predictor is not thread-safe: runs from several threads (the server's inference and
    final-result threads) take turns."""

    def __init__(
        self,
        model_dir: Path,
        *,
        num_threads: int = 2,
        use_mkldnn: bool = True,
        int8: bool = False,
        int8_op_types: Iterable[str] = INT8_OP_TYPES,
        streaming: bool = False,
        gpu: GpuInference | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self._gpu = gpu
        self._lock = threading.RLock()  # reentrant: the TensorRT rebind runs the batch again inside run()
        if gpu is not None:
            require_gpu_inference(gpu)
            # TensorRT needs every subgraph's shape range: the first batch records them (see GpuInference).
            self._shape_dir = tempfile.TemporaryDirectory(prefix="paddle_asr_trt_")
            self._shape_file = Path(self._shape_dir.name) / "shape_range.pbtxt"
            collect = bool(gpu.tensorrt)
            self._bind(make_config(self.model_dir, gpu=gpu, shape_file=self._shape_file, collect_shapes=collect))
            self._pending_tensorrt = collect
            return
        self._pending_tensorrt = False
        self._bind(make_config(self.model_dir, num_threads=num_threads, use_mkldnn=use_mkldnn, int8=int8,
                               int8_op_types=int8_op_types, streaming=streaming))

    def _bind(self, config: paddle_infer.Config) -> None:
        self.config = config
        with quiet_output():  # INT8 passes print op statistics to std::cerr
            self.predictor = paddle_infer.create_predictor(self.config)
        self.input_names = list(self.predictor.get_input_names())
        self._inputs = {n: self.predictor.get_input_handle(n) for n in self.input_names}
        self._outputs = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.model_dir} needs inputs {missing}; got {sorted(feeds)}")
        for name in self.input_names:
            value = np.ascontiguousarray(feeds[name])
            handle = self._inputs[name]
            handle.reshape(list(value.shape))
            handle.copy_from_cpu(value)
        self.predictor.run()
        if self._pending_tensorrt:
            # The shape ranges of this batch are recorded once the predictor is released; then
            # the TensorRT predictor replaces it and runs the same batch.
            self._inputs, self._outputs = {}, []
            del self.predictor
            gc.collect()
            self._pending_tensorrt = False
            self._bind(make_config(self.model_dir, gpu=self._gpu, shape_file=self._shape_file))
            return self.run(feeds)
        return [h.copy_to_cpu() for h in self._outputs]
