"""The model-family table (`paddle_asr.families`): it lists exactly the families a config accepts,
every entry is complete, and an unknown family is a clear error wherever its name is read."""

from __future__ import annotations

import inspect
import typing

import paddle
import pytest

from paddle_asr.config import AsrConfig, DecoderConfig, DeepSpeech2Config, EncoderConfig, ModelConfig, ModelName
from paddle_asr.errors import AsrError
from paddle_asr.export.backend import ExportedBackend
from paddle_asr.export.calibrate import default_fp32_layers
from paddle_asr.export.quantize import DEFAULT_OP_TYPES, EDGE_LAYERS
from paddle_asr.export.runtime import load_backend
from paddle_asr.families import FAMILIES, Family, dygraph_backend, family, family_of
from paddle_asr.models.registry import build_model

PIECES = ("build", "dygraph_backend", "runtime_functions", "parity_inputs", "check_streaming_parity", "bundle_meta",
          "runtime_backend")


def small_config(name: str) -> AsrConfig:
    model = ModelConfig(name=name, encoder=EncoderConfig(output_size=16, attention_heads=2, linear_units=16,
                                                         num_blocks=1),
                        decoder=DecoderConfig(attention_heads=2, linear_units=16, num_blocks=1),
                        deepspeech2=DeepSpeech2Config(num_rnn_layers=1, rnn_layer_size=8))
    return AsrConfig(model=model, vocab_size=10, input_dim=20)


def test_the_table_lists_exactly_the_families_a_config_accepts():
    assert set(FAMILIES) == set(typing.get_args(ModelName))
    assert all(fam.name == name and isinstance(fam, Family) for name, fam in FAMILIES.items())


@pytest.mark.parametrize("name", FAMILIES)
def test_every_entry_names_every_piece(name):
    fam = family(name)
    for piece in PIECES:
        assert callable(getattr(fam, piece)), f"{name}: {piece}"
    assert inspect.isclass(fam.runtime_backend) and issubclass(fam.runtime_backend, ExportedBackend)
    assert issubclass(fam.model_class, paddle.nn.Layer)
    quant = fam.quantization
    for vnni in (False, True):
        assert set(quant.fp32_layers_for(vnni)) <= set(EDGE_LAYERS)
        assert default_fp32_layers(name, vnni) == quant.fp32_layers_for(vnni)
    assert set(quant.op_types) <= set(DEFAULT_OP_TYPES) and quant.algo


@pytest.mark.parametrize("name", FAMILIES)
def test_a_built_network_finds_its_family(name):
    paddle.seed(0)
    model = build_model(small_config(name))
    assert isinstance(model, family(name).model_class) and family_of(model) is family(name)
    backend = dygraph_backend(model)
    assert isinstance(backend, family(name).dygraph_backend)
    assert backend.has_decoder == (name == "u2")


def test_the_quantization_defaults_are_those_measured():
    assert default_fp32_layers("u2", True) == default_fp32_layers("u2", False) == EDGE_LAYERS
    assert default_fp32_layers("deepspeech2", True) == ("first_conv",)
    assert default_fp32_layers("deepspeech2", False) == EDGE_LAYERS


def test_an_unknown_family_is_a_clear_error(tmp_path):
    config = small_config("u2")
    config.model.name = "rnnt"  # past load_config, which refuses it already
    with pytest.raises(AsrError, match="model.name 'rnnt' unknown; known models: u2, deepspeech2"):
        build_model(config)
    with pytest.raises(AsrError, match=r"meta.json: model 'rnnt' unknown; known models: u2, deepspeech2"):
        load_backend(tmp_path, {"model": "rnnt"})
    with pytest.raises(AsrError, match="known models: u2, deepspeech2"):
        family_of(paddle.nn.Linear(2, 2))
