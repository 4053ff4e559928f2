"""Post-training static INT8 quantization (PaddleSlim) of an exported FP32 model.

The input is the legacy ``model.pdmodel`` written by ``export.py`` (PaddleSlim
2.6 cannot read PIR ``.json`` programs). The output is a legacy program with
``quantize_linear``/``dequantize_linear`` pairs carrying the calibrated scales;
Paddle Inference turns those into oneDNN INT8 kernels at load time
(``InferenceModel(..., int8=True)``). Quantized weights are stored as int8
(channel-wise scales), so the INT8 directory is ~1/3 of the FP32 one
(conformer d=256x12: 144.5 MB -> 50.0 MB).

Note: the INT8 program only runs with the oneDNN INT8 configuration; the
plain CPU kernels of ``dequantize_linear`` reject some of PaddleSlim's
channel-wise scales (1x1 Conv1D weights), so never load it as FP32.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.export.export import MODEL_FILENAME, PARAMS_FILENAME, _replace_dir, make_tmp_dir
from paddle_asr.export.inference import quiet_output

# Ops whose *weights and inputs* get INT8 scales. matmul_v2 covers every
# nn.Linear (FFN, attention projections, subsampling and CTC output) and the
# activation x activation attention matmuls; conv2d covers the subsampling
# convs and the 1x1 pointwise Conv1D of the conformer conv module;
# depthwise_conv2d the depthwise Conv1D. mul/matmul are legacy spellings of
# the same GEMMs that older exports may still contain.
DEFAULT_OP_TYPES: tuple[str, ...] = (
    "conv2d",
    "depthwise_conv2d",
    "mul",
    "matmul",
    "matmul_v2",
)
# Chosen by measurement: greedy-argmax agreement INT8 vs FP32 on a 6-block
# stand-in conformer was avg 0.92-0.95, hist 0.93-0.95, mse 0.91-0.94,
# abs_max 0.90-0.95. avg is as good as hist and needs one calibration pass
# instead of two (hist/KL run the data twice). Re-check on a trained model.
DEFAULT_ALGO = "avg"

_QUANT_OPS = {"quantize_linear", "fake_quantize_abs_max", "fake_quantize_range_abs_max",
              "fake_quantize_moving_average_abs_max", "fake_quantize_dequantize_moving_average_abs_max",
              "fake_channel_wise_quantize_abs_max", "fake_channel_wise_quantize_dequantize_abs_max"}
_DEQUANT_OPS = {"dequantize_linear", "fake_dequantize_max_abs", "fake_channel_wise_dequantize_max_abs",
                "fake_quantize_dequantize_moving_average_abs_max",
                "fake_channel_wise_quantize_dequantize_abs_max"}
_SHAPE_OPS = {"unsqueeze2", "squeeze2", "reshape2", "transpose2", "assign"}


def _quant_post_static():
    with quiet_output():
        from paddleslim.quant import quant_post_static  # lazy: heavy and noisy import
    return quant_post_static


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in Path(d).iterdir() if p.is_file())


def program_op_report(model_file: Path, op_types: Iterable[str]) -> dict:
    """Count what will run in INT8 once loaded with ``InferenceModel(int8=True)``.

    An op counts as quantized when one of its inputs is a *weight* (persistable
    var) coming out of a dequantize op: those become int8 oneDNN fc/conv.
    Quantizable-type ops without a quantized weight -- the activation x
    activation attention matmuls -- are listed under ``fp32_ops``: PaddleSlim
    gives them scales, but ``INT8_OP_TYPES`` keeps them in FP32 on purpose.
    """
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(Path(model_file).read_bytes())
    ops = [op for block in desc.blocks for op in block.ops]
    persistable = {v.name for block in desc.blocks for v in block.vars if v.persistable}
    producer = {a: op for op in ops for v in op.outputs for a in v.arguments}

    def quantized_weight(var: str) -> bool:
        # Walk back through quant/dequant and shape-only ops (Conv1D weights
        # reach conv2d through unsqueeze2); quantized if the chain passes a
        # dequantize op and starts at a parameter.
        seen_dequant = False
        # A var no op produces is a stored parameter (inputs come from feed).
        while var not in persistable and var in producer:
            op = producer[var]
            if op.type not in _QUANT_OPS | _DEQUANT_OPS | _SHAPE_OPS:
                return False
            seen_dequant |= op.type in _DEQUANT_OPS
            var = next(x for v in op.inputs if v.parameter == "X" for x in v.arguments)
        return seen_dequant

    op_types = set(op_types)
    quantized, fp32 = Counter(), Counter()
    for op in ops:
        if op.type not in op_types:
            continue
        ins = [a for v in op.inputs for a in v.arguments]
        (quantized if any(quantized_weight(a) for a in ins) else fp32)[op.type] += 1
    return {
        "quantized_ops": dict(quantized),
        "fp32_ops": dict(fp32),
        "quant_dequant_ops": sum(op.type in _QUANT_OPS | _DEQUANT_OPS for op in ops),
    }


class _CalibLoader:
    """PaddleSlim wants a re-iterable callable yielding feed dicts and a len().

    Batches are materialised once: KL/hist calibration walks the data twice,
    and calibration sets are small (tens of batches).
    """

    def __init__(self, batches: Iterable[tuple[np.ndarray, np.ndarray]], limit: int | None) -> None:
        self.feeds = []
        for feats, lengths in batches:
            self.feeds.append({
                "feats": np.ascontiguousarray(feats, dtype=np.float32),
                "feats_lengths": np.ascontiguousarray(lengths, dtype=np.int64),
            })
            if limit is not None and len(self.feeds) >= limit:
                break
        if not self.feeds:
            raise ValueError("calib_batches() yielded no batches")

    def __len__(self) -> int:
        return len(self.feeds)

    def __call__(self) -> Iterator[dict]:
        return iter(self.feeds)


def quantize_ptq(
    fp32_dir: Path,
    int8_dir: Path,
    calib_batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    *,
    algo: str = DEFAULT_ALGO,
    batch_nums: int | None = None,
    quantizable_op_type: Iterable[str] = DEFAULT_OP_TYPES,
) -> dict:
    """Calibrate ``fp32_dir/model.pdmodel`` on ``calib_batches()`` and write ``int8_dir``.

    ``calib_batches`` returns ``(feats [B,T,D] f32, feats_lengths [B] i64)``
    batches (use real utterances of typical lengths; ~8-32 batches suffice).
    Returns ``{algo, batches, quantized_ops, fp32_ops, quant_dequant_ops,
    fp32_bytes, int8_bytes}``.
    """
    fp32_dir, int8_dir = Path(fp32_dir), Path(int8_dir)
    if not (fp32_dir / MODEL_FILENAME).is_file():
        raise FileNotFoundError(
            f"quantize_ptq needs a legacy {MODEL_FILENAME} in {fp32_dir} "
            "(PaddleSlim cannot read PIR model.json); export with export_inference_model"
        )
    op_types = list(quantizable_op_type)
    loader = _CalibLoader(calib_batches(), batch_nums)
    quant_post_static = _quant_post_static()
    tmp_dir = make_tmp_dir(int8_dir)
    try:
        # PaddleSlim builds legacy static programs: switch this process to the
        # old IR (and static mode) just for the call, then restore.
        scope = paddle.static.Scope()  # keep calibration tensors out of the global scope
        with paddle.pir_utils.OldIrGuard(), paddle.static.scope_guard(scope), quiet_output():
            exe = paddle.static.Executor(paddle.CPUPlace())
            quant_post_static(
                executor=exe,
                model_dir=str(fp32_dir),
                quantize_model_path=str(tmp_dir),
                data_loader=loader,
                model_filename=MODEL_FILENAME,
                params_filename=PARAMS_FILENAME,
                save_model_filename=MODEL_FILENAME,
                save_params_filename=PARAMS_FILENAME,
                batch_nums=len(loader),
                scope=scope,
                algo=algo,
                quantizable_op_type=op_types,
                weight_quantize_type="channel_wise_abs_max",
                onnx_format=True,  # quantize_linear/dequantize_linear, read by quant_dequant_onednn_pass
            )
        report = {"algo": algo, "batches": len(loader)}
        report.update(program_op_report(tmp_dir / MODEL_FILENAME, op_types))
        report["fp32_bytes"] = _dir_bytes(fp32_dir)
        report["int8_bytes"] = _dir_bytes(tmp_dir)
        _replace_dir(tmp_dir, int8_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return report
