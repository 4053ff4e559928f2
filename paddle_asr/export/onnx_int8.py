"""Stage 6's ONNX INT8 export: ONNX Runtime's quantization of the FP32 ONNX export (`export.onnx`).

Every MatMul with a constant weight gets INT8 weights and activations quantized per call (dynamic
quantization, as WeNet's sherpa-onnx models are). With calibration inputs, the encoder's
convolution subsampling is quantized too, statically (QLinearConv with per-channel weights, as
PaddleSlim's; activation ranges measured on the calibration utterances): ONNX Runtime has no fast
dynamic INT8 convolution (ConvInteger measured 3x slower than FP32), and the second 3x3 convolution
of `Conv2dSubsampling4` is a quarter of the AISHELL Conformer's encoder time. The first convolution
(one input channel) stays FP32, as in the Paddle INT8 bundle (`--fp32_layers first_conv`).
sherpa-onnx's files are quantized dynamically only: their inputs (sherpa-onnx's fbank, WeNet's
caches) are not what the calibration set feeds.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from paddle_asr.artifacts import atomic_directory
from paddle_asr.export.bundle import copy_bundle_files
from paddle_asr.export.inference import quiet_output
from paddle_asr.export.onnx import CHUNK, ENCODER, OFFLINE_MODEL, STREAMING_MODEL

# The files stage 6 quantizes for each program name of `paddle-asr quantize --functions` (the
# encoder brings its streaming forms along, as the Paddle INT8 bundle's encoder_chunk).
INT8_FILES = {"encoder": (ENCODER, CHUNK, OFFLINE_MODEL, STREAMING_MODEL),
              "decoder": ("decoder.onnx", "decoder_step.onnx")}
# Files whose convolutions are quantized statically when calibration inputs are given for them.
CALIBRATED_FILES = (ENCODER, CHUNK)
# {file name: a callable yielding that file's input feeds, one call's worth each}.
Calibration = dict[str, Callable[[], Iterable[dict[str, np.ndarray]]]]


def static_convolutions(model_file: Path) -> list[str]:
    """The Conv nodes quantized statically: full (not depthwise) convolutions with a kernel wider
    than one and more than one input channel, i.e. the subsampling's convolutions after the first."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    weights = {w.name: tuple(w.dims) for w in model.graph.initializer}
    names = []
    for node in model.graph.node:
        shape = weights.get(node.input[1], ()) if node.op_type == "Conv" and len(node.input) > 1 else ()
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if len(shape) == 4 and group == 1 and shape[1] > 1 and max(shape[2:]) > 1:
            names.append(node.name)
    return names


def energy_matmuls(model_file: Path) -> list[str]:
    """The MatMul nodes fed by an Exp: sherpa-onnx's files map its mel energies onto our banks
    (`export.onnx.SherpaFbank`), and those energies span many orders of magnitude: quantized to 8
    bits per call only the loudest bins keep a value, and sherpa-onnx read the demo's INT8 files at
    79 % CER instead of 4.2 % (docs/onnx.md). They stay FP32 (an 80 x 80 product a frame)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    exp_outputs = {o for node in model.graph.node if node.op_type == "Exp" for o in node.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in exp_outputs]


def _reader(feeds: Iterable[dict[str, np.ndarray]]):
    """ONNX Runtime's CalibrationDataReader over our feed dictionaries (onnxruntime imported on use)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return Feeds()


def quantize_onnx_file(src: Path, out: Path, calibration: Callable[[], Iterable[dict]] | None = None) -> None:
    """`out`: `src` with INT8 MatMul weights (all but `energy_matmuls`), and with its convolutions
    (`static_convolutions`) quantized on the ranges `calibration`'s feeds show, when it is given."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    convs = static_convolutions(src) if calibration is not None else []
    with tempfile.TemporaryDirectory(prefix="onnx_int8.") as tmp, quiet_output():
        if convs:
            reader = _reader(calibration())
            staged = Path(tmp) / src.name
            quantize_static(str(src), str(staged), reader, quant_format=QuantFormat.QOperator,
                            op_types_to_quantize=["Conv"], nodes_to_quantize=convs,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
            src = staged
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         nodes_to_exclude=energy_matmuls(src))


def quantize_onnx_export(src: Path, out: Path, functions: list[str], calibration: Calibration | None = None
                         ) -> list[str]:
    """The INT8 ONNX export of the FP32 one in `src` for the files of `functions`; the others are
    copied. `calibration` gives the feeds of the files in CALIBRATED_FILES. Returns the quantized files."""
    src, out, calibration = Path(src), Path(out), calibration or {}
    names = [f for fn in functions for f in INT8_FILES.get(fn, ()) if (src / f).is_file()]
    with atomic_directory(out) as tmp:
        for path in sorted(src.iterdir()):
            if path.name in names:
                feeds = calibration.get(path.name) if path.name in CALIBRATED_FILES else None
                quantize_onnx_file(path, tmp / path.name, feeds)
            elif path.is_file() and not path.name.startswith("."):  # not the FP32 export's completion record
                shutil.copyfile(path, tmp / path.name)
        copy_bundle_files(src, tmp, precision="int8", int8_functions=functions, onnx_int8_files=names)
    return names
