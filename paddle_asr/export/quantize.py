"""Post-training static INT8 quantization (PaddleSlim) of an exported FP32 model.

The input is the legacy ``model.pdmodel`` written by ``export.py`` (PaddleSlim
2.6 cannot read PIR ``.json`` programs). The output is a legacy program with
``quantize_linear``/``dequantize_linear`` pairs carrying the calibrated scales;
Paddle Inference turns those into oneDNN INT8 kernels at load time
(``InferenceModel(..., int8=True)``). Quantized weights are stored as int8
(channel-wise scales), so the INT8 directory of a Conformer is about a third
of the FP32 one.

A DeepSpeech2 encoder gains next to nothing: its RNN layers (the ``rnn`` op,
nearly all of its weights and time) have no INT8 path (``RECURRENT_OPS``), so
only the second convolution and the CTC output layer run in INT8 (the stage
keeps just the first convolution in FP32 for it, ``--fp32_layers auto``; on a
CPU without VNNI the output layer too: each family's defaults are in
``paddle_asr.families``). Neither size nor encoder time changes measurably
(bench/RESULTS.md, "Figures formerly in code comments").

Note: the INT8 program only runs with the oneDNN INT8 configuration; the
plain CPU kernels of ``dequantize_linear`` reject some of PaddleSlim's
channel-wise scales (1x1 Conv1D weights), so never load it as FP32.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.artifacts import atomic_directory
from paddle_asr.cpu_settings import cpu_has_vnni
from paddle_asr.export.common import MODEL_FILENAME, PARAMS_FILENAME
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
# Chosen by measurement on the trained demo Conformer (test CER, FP32 16.97 %): with the observer
# pairs stripped and the edge layers in FP32, hist gave 17.03 % and avg 18.01 %. hist walks the
# calibration data twice; with 64 utterances that is seconds.
DEFAULT_ALGO = "hist"

_QUANT_OPS = {"quantize_linear", "fake_quantize_abs_max", "fake_quantize_range_abs_max",
              "fake_quantize_moving_average_abs_max", "fake_quantize_dequantize_moving_average_abs_max",
              "fake_channel_wise_quantize_abs_max", "fake_channel_wise_quantize_dequantize_abs_max"}
_DEQUANT_OPS = {"dequantize_linear", "fake_dequantize_max_abs", "fake_channel_wise_dequantize_max_abs",
                "fake_quantize_dequantize_moving_average_abs_max",
                "fake_channel_wise_quantize_dequantize_abs_max"}
_SHAPE_OPS = {"unsqueeze2", "squeeze2", "reshape2", "transpose2", "assign"}
# Weight-carrying ops with no INT8 path at all; the report lists them under fp32_ops. That is the
# `rnn` op that nn.LSTM / nn.GRU export to, which in DeepSpeech2 holds nearly all weights and
# multiply-adds (its input projection included). PaddleSlim quantizes the weights of conv2d,
# depthwise_conv2d, conv2d_transpose, mul, matmul and matmul_v2 only
# (paddle.static.quantization.quant_config.SUPPORT_WEIGHT_QUANTIZATION_OP_DICT), and Paddle 3.0.0
# registers only plain CPU float/double kernels for `rnn`, no oneDNN kernel. oneDNN INT8 RNNs
# exist as fusion_lstm / fusion_gru / multi_gru, which the inference passes build from the legacy
# `lstm` / `gru` ops (LoD sequences, the old fluid layers) and never from `rnn`.
RECURRENT_OPS = {"rnn"}


def _quant_post_static():
    with quiet_output():
        from paddleslim.quant import quant_post_static  # lazy: heavy and noisy import
    return quant_post_static


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in Path(d).iterdir() if p.is_file())


def _load_desc(model_file: Path):
    """The legacy ProgramDesc of a `.pdmodel`, read as protobuf (no executor, no scope)."""
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(Path(model_file).read_bytes())
    return desc


def program_op_report(model_file: Path, op_types: Iterable[str]) -> dict:
    """Count what will run in INT8 once loaded with ``InferenceModel(int8=True)``.

    An op counts as quantized when one of its inputs is a *weight* (persistable
    var) coming out of a dequantize op: those become int8 oneDNN fc/conv.
    Quantizable-type ops without a quantized weight -- the activation x
    activation attention matmuls, the edge layers -- are listed under
    ``fp32_ops``: PaddleSlim gives them scales, but ``INT8_OP_TYPES`` keeps
    them in FP32 on purpose. So are recurrent ops (``RECURRENT_OPS``), which
    cannot be quantized at all.
    """
    desc = _load_desc(model_file)
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
        if op.type in RECURRENT_OPS:
            fp32[op.type] += 1
        if op.type not in op_types:
            continue
        ins = [a for v in op.inputs for a in v.arguments]
        (quantized if any(quantized_weight(a) for a in ins) else fp32)[op.type] += 1
    return {
        "quantized_ops": dict(quantized),
        "fp32_ops": dict(fp32),
        "quant_dequant_ops": sum(op.type in _QUANT_OPS | _DEQUANT_OPS for op in ops),
    }


EDGE_LAYERS = ("first_conv", "output_layer")


# Ops between an output layer's product and the program's output: its bias and log-softmax (which
# the program spells out as max, subtract, exp, sum, log, subtract; the input is X throughout).
_OUTPUT_PATH_OPS = {"elementwise_add", "elementwise_sub", "log_softmax", "softmax", "scale", "cast", "assign"}


def edge_layer_weights(model_file: Path, layers: Iterable[str] = EDGE_LAYERS) -> list[str]:
    """Weights of the first convolution and/or the output layers: the last matrix product (the CTC
    output layer), and any other product whose result reaches a program output through bias and
    log-softmax alone (a U2++ decoder's two directions).

    Both are kept in FP32 by default, the usual practice: the first conv sees raw features through
    a single input channel (little int8 speed-up, large rounding error) and the output layer's
    rounding lands directly on the posteriors that decoding ranks.
    """
    layers = set(layers)
    unknown = layers - set(EDGE_LAYERS)
    if unknown:
        raise ValueError(f"unknown edge layers {sorted(unknown)}; choose from {EDGE_LAYERS}")
    desc = _load_desc(model_file)
    ops = [op for block in desc.blocks for op in block.ops]
    persistable = {v.name for block in desc.blocks for v in block.vars if v.persistable}

    def weight(op) -> str | None:
        names = [a for v in op.inputs if v.parameter in ("Filter", "Y") for a in v.arguments]
        return next((n for n in names if n in persistable), None)

    convs = [w for op in ops if op.type in ("conv2d", "depthwise_conv2d") and (w := weight(op))]
    gemms = [w for op in ops if op.type in ("matmul_v2", "mul", "matmul") and (w := weight(op))]
    outputs = list(dict.fromkeys(gemms[-1:] + _output_products(ops, weight)))
    chosen = (convs[:1] if "first_conv" in layers else []) + (outputs if "output_layer" in layers else [])
    return [w for w in chosen if w]


def _output_products(ops: list, weight) -> list[str]:
    """The weights of the products that feed each fetched output through `_OUTPUT_PATH_OPS` alone."""
    producer = {a: op for op in ops for v in op.outputs for a in v.arguments}
    found = []
    for fetch in (op for op in ops if op.type == "fetch"):
        var = next(a for v in fetch.inputs if v.parameter == "X" for a in v.arguments)
        while (op := producer.get(var)) is not None and op.type in _OUTPUT_PATH_OPS:
            var = next(a for v in op.inputs if v.parameter == "X" for a in v.arguments)
        if op is not None and op.type in ("matmul_v2", "mul", "matmul") and (w := weight(op)):
            found.append(w)
    return found


def strip_activation_observers(model_file: Path, quantized_op_types: Iterable[str]) -> int:
    """Remove quantize/dequantize pairs on activations that feed no INT8 kernel; return how many.

    In the ONNX format PaddleSlim puts a quantize_linear/dequantize_linear pair after every
    "observer" op (residual adds, layer norms, softmax, transposes...) to carry its scale. oneDNN
    runs only fc/conv in INT8 (inference.INT8_OP_TYPES); every other pair would execute as a real rounding
    of an FP32 activation to 256 levels. Measured on the demo Conformer: +2.4 CER points with
    *no* layer quantized at all. So each consumer that will not run an INT8 kernel is rewired to
    the original FP32 tensor, and pairs left without consumers are deleted. Variables stay in the
    program so that the combined parameter file still matches it.
    """
    desc = _load_desc(model_file)
    block = desc.blocks[0]
    ops = list(block.ops)
    persistable = {v.name for v in block.vars if v.persistable}
    producer = {a: op for op in ops for v in op.outputs for a in v.arguments}

    consumers: dict[str, list] = {}
    for op in ops:
        for v in op.inputs:
            for name in v.arguments:
                consumers.setdefault(name, []).append(op)

    def x_input(op) -> str:
        return next(a for v in op.inputs if v.parameter == "X" for a in v.arguments)

    def is_weight(var: str) -> bool:
        # A parameter, possibly reshaped (Conv1D weights reach conv2d through unsqueeze2).
        passthrough = _SHAPE_OPS | _QUANT_OPS | _DEQUANT_OPS
        while var not in persistable and var in producer and producer[var].type in passthrough:
            var = x_input(producer[var])
        return var in persistable

    def has_quantized_weight(op) -> bool:
        for v in op.inputs:
            for name in v.arguments:
                src = producer.get(name)
                while src is not None and src.type in _SHAPE_OPS:
                    src = producer.get(x_input(src))
                if src is not None and src.type in _DEQUANT_OPS and is_weight(x_input(src)):
                    return True
        return False

    # Program ops that oneDNN runs in INT8 (as fc / fused_conv2d, see INT8_OP_TYPES), limited to
    # the types the caller asked to quantize: PaddleSlim also observes other convs' inputs.
    int8_ops = set(quantized_op_types) & {"conv2d", "depthwise_conv2d", "matmul_v2", "mul", "matmul"}

    def feeds_int8(op) -> bool:
        """True when this op runs in INT8, or only reshapes data on its way to such ops."""
        if op.type in _SHAPE_OPS:
            outs = [consumer for v in op.outputs for name in v.arguments for consumer in consumers.get(name, [])]
            return bool(outs) and all(feeds_int8(o) for o in outs)
        return op.type in int8_ops and has_quantized_weight(op)

    int8_consumers = {id(op) for op in ops if feeds_int8(op)}
    removed = 0
    dead: set[int] = set()
    for deq in ops:
        if deq.type != "dequantize_linear":
            continue
        x = next(a for v in deq.inputs if v.parameter == "X" for a in v.arguments)
        quant = producer.get(x)
        if quant is None or quant.type != "quantize_linear":
            continue
        source = x_input(quant)
        y = deq.outputs[0].arguments[0]
        users = consumers.get(y, [])
        for op in users:
            if id(op) not in int8_consumers:
                for v in op.inputs:
                    v.arguments[:] = [source if a == y else a for a in v.arguments]
        if all(id(op) not in int8_consumers for op in users):
            dead.update((id(deq), id(quant)))
            removed += 1
    kept = [op for op in ops if id(op) not in dead]
    del block.ops[:]
    block.ops.extend(kept)
    Path(model_file).write_bytes(desc.SerializeToString())
    return removed


class _CalibLoader:
    """PaddleSlim wants a re-iterable callable yielding feed dicts and a len().

    Batches are materialised once: KL/hist calibration walks the data twice,
    and calibration sets are small (tens of batches).
    """

    def __init__(self, batches: Iterable[tuple[np.ndarray, np.ndarray] | dict[str, np.ndarray]],
                 limit: int | None) -> None:
        self.feeds = []
        for batch in batches:
            if not isinstance(batch, dict):  # (feats, lengths) of the encoder
                batch = {"feats": batch[0], "feats_lengths": batch[1]}
            self.feeds.append({k: np.ascontiguousarray(v) for k, v in batch.items()})
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
    fp32_layers: Iterable[str] = EDGE_LAYERS,
) -> dict:
    """Calibrate ``fp32_dir/model.pdmodel`` on ``calib_batches()`` and write ``int8_dir``.

    ``fp32_layers`` names the edge layers kept in FP32 (``EDGE_LAYERS``, both by default).
    ``calib_batches`` returns ``(feats [B,T,D] f32, feats_lengths [B] i64)`` for the encoder, or
    dicts {input name: array} for any other program
    batches (use real utterances of typical lengths; ~8-32 batches suffice).
    Returns ``{algo, batches, kept_fp32_weights, observers_removed, cpu_vnni, quantized_ops,
    fp32_ops, quant_dequant_ops, fp32_bytes, int8_bytes}`` (``cpu_vnni``: whether the CPU that
    calibrated has VNNI, see ``cpu_settings.cpu_has_vnni``).
    """
    fp32_dir, int8_dir = Path(fp32_dir), Path(int8_dir)
    if not (fp32_dir / MODEL_FILENAME).is_file():
        raise FileNotFoundError(
            f"quantize_ptq needs a legacy {MODEL_FILENAME} in {fp32_dir} "
            "(PaddleSlim cannot read PIR model.json); export with export_inference_model"
        )
    op_types = list(quantizable_op_type)
    skip = edge_layer_weights(fp32_dir / MODEL_FILENAME, fp32_layers)
    loader = _CalibLoader(calib_batches(), batch_nums)
    quant_post_static = _quant_post_static()
    with atomic_directory(int8_dir) as tmp_dir:
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
                skip_tensor_list=skip or None,
            )
        stripped = strip_activation_observers(tmp_dir / MODEL_FILENAME, op_types)
        report = {"algo": algo, "batches": len(loader), "kept_fp32_weights": skip, "observers_removed": stripped,
                  "cpu_vnni": cpu_has_vnni()}
        report.update(program_op_report(tmp_dir / MODEL_FILENAME, op_types))
        report["fp32_bytes"] = _dir_bytes(fp32_dir)
        report["int8_bytes"] = _dir_bytes(tmp_dir)
    return report
