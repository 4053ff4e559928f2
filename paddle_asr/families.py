"""Model families: everything that differs between kinds of model, in one table keyed by `model.name`.

The rest of the engine asks this table instead of testing a model's class or a bundle's name:
building the network (`models.registry.build_model`), decoding with the dynamic graph (stage 3),
export and its parity checks (`export.export.export_model`), the bundle's meta.json
(`export.bundle`), the Paddle Inference runtime (`export.runtime.load_backend`) and INT8
quantization defaults (`export.calibrate`).

A new family is one entry in `FAMILIES` plus its own modules: the network (`models/<family>.py`, with
a `build_<family>(config, cmvn)`), its dynamic-graph backend, and `export/<family>.py` (runtime
functions, parity inputs and streaming check, bundle meta, exported backend). `config.ModelName`
lists the names a config accepts; tests/test_families.py holds the two to the same set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paddle import nn

from paddle_asr.decode.dygraph_backend import DeepSpeech2DygraphBackend, DygraphBackend
from paddle_asr.errors import AsrError
from paddle_asr.export import deepspeech2 as ds2_export
from paddle_asr.export import u2 as u2_export
from paddle_asr.export.backend import ExportedBackend
from paddle_asr.export.quantize import DEFAULT_ALGO, DEFAULT_OP_TYPES, EDGE_LAYERS
from paddle_asr.models.deepspeech2 import DeepSpeech2Model, build_deepspeech2
from paddle_asr.models.u2 import U2Model, build_u2


@dataclass(frozen=True)
class QuantDefaults:
    """Stage 6's defaults for a family (`--fp32_layers auto` and what PaddleSlim quantizes)."""

    fp32_layers: tuple[str, ...]  # edge layers kept in FP32 on a CPU without VNNI
    fp32_layers_vnni: tuple[str, ...]  # ... and on a CPU with VNNI (cpu_settings.cpu_has_vnni)
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    algo: str = DEFAULT_ALGO
    # Whether a quantized encoder brings the streaming `encoder_chunk` program along (calibrated
    # on the chunks of the calibration utterances), so streaming runs what the encoder runs.
    quantize_chunk: bool = True

    def fp32_layers_for(self, vnni: bool) -> tuple[str, ...]:
        return self.fp32_layers_vnni if vnni else self.fp32_layers


@dataclass(frozen=True)
class Family:
    """One kind of model and the functions that handle it at every stage."""

    name: str  # `model.name` in configs, `model` in a bundle's meta.json
    model_class: type[nn.Layer]
    build: Callable  # (config, cmvn (mean, istd)) -> the network
    dygraph_backend: Callable  # (model) -> a decode.recognizer.Backend on the dynamic graph
    runtime_functions: Callable  # (model, feat_dim) -> [export.common.RuntimeFunction]
    parity_inputs: Callable  # (model, feat_dim) -> {function: {input: array}}
    check_streaming_parity: Callable  # (model, encoder_chunk dir, feat_dim) -> max |diff|
    bundle_meta: Callable  # (config, model) -> the family's meta.json entries
    runtime_backend: type[ExportedBackend]  # (bundle dir, meta, num_threads=, gpu=) on Paddle Inference
    quantization: QuantDefaults
    # The tensors with a row per output unit, and the axis that indexes the units: fine-tuning
    # (`train.finetune`) carries them over unit by unit when the units change.
    unit_tensors: dict[str, int]


FAMILIES: dict[str, Family] = {
    "u2": Family(
        name="u2", model_class=U2Model, build=build_u2, dygraph_backend=DygraphBackend,
        runtime_functions=u2_export.runtime_functions, parity_inputs=u2_export.parity_inputs,
        check_streaming_parity=u2_export.check_streaming_parity, bundle_meta=u2_export.bundle_meta,
        runtime_backend=u2_export.U2ExportedBackend,
        # Both edges in FP32: that measured best for the Conformer's CER.
        quantization=QuantDefaults(fp32_layers=EDGE_LAYERS, fp32_layers_vnni=EDGE_LAYERS),
        unit_tensors={"ctc.ctc_lo.weight": 1, "ctc.ctc_lo.bias": 0, "decoder.embed.0.weight": 0,
                      "decoder.output_layer.weight": 1, "decoder.output_layer.bias": 0}),
    "deepspeech2": Family(
        name="deepspeech2", model_class=DeepSpeech2Model, build=build_deepspeech2,
        dygraph_backend=DeepSpeech2DygraphBackend,
        runtime_functions=ds2_export.runtime_functions, parity_inputs=ds2_export.parity_inputs,
        check_streaming_parity=ds2_export.check_streaming_parity, bundle_meta=ds2_export.bundle_meta,
        runtime_backend=ds2_export.DeepSpeech2ExportedBackend,
        # The RNNs stay FP32 anyway (no INT8 kernel for the `rnn` op), so the output layer is one of
        # the two places INT8 can act; without VNNI oneDNN's INT8 GEMM cost it its accuracy
        # (bench/RESULTS.md), so there it stays FP32 too.
        # Its chunk program stays FP32: without the CTC layer (in ctc_activation) its one INT8 op
        # would be the second convolution, a negligible share of the time next to the RNNs.
        quantization=QuantDefaults(fp32_layers=EDGE_LAYERS, fp32_layers_vnni=("first_conv",),
                                   quantize_chunk=False),
        unit_tensors={"decoder.ctc_lo.weight": 1, "decoder.ctc_lo.bias": 0}),
}


def family(name: str, where: str = "model.name") -> Family:
    """The family called `name`; `where` says where the name was read, for the error."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise AsrError(f"{where} '{name}' unknown; known models: {', '.join(FAMILIES)}") from None


def bundle_family(model_dir: Path, meta: dict) -> Family:
    """The family of an exported bundle from its meta.json; a meta without `model` (written before
    DeepSpeech2 existed) holds a U2 model."""
    return family(meta.get("model", "u2"), where=f"{Path(model_dir) / 'meta.json'}: model")


def family_of(model: nn.Layer) -> Family:
    """The family of a built network."""
    for fam in FAMILIES.values():
        if isinstance(model, fam.model_class):
            return fam
    raise AsrError(f"{type(model).__name__} is no model family's network; known models: {', '.join(FAMILIES)}")


def dygraph_backend(model: nn.Layer):
    """The dynamic-graph decoding backend of a built network (stage 3)."""
    return family_of(model).dygraph_backend(model)
