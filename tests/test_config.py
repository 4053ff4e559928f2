"""Strict configs: unknown keys and wrong types are errors that name the file and key."""

import dataclasses
from pathlib import Path

import pytest

from paddle_asr.config import AsrConfig, load_config, load_decode_config, save_config
from paddle_asr.errors import AsrError
from paddle_asr.models.registry import build_model

REPO = Path(__file__).resolve().parents[1]


def test_unknown_key_is_an_error_naming_file_and_key_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lerning_rate: 0.1\n")
    with pytest.raises(AsrError, match=r"bad.yaml.*'optim.lerning_rate'"):
        load_config(cfg)


def test_wrong_type_is_an_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training:\n  batch_size: sixteen\n")
    with pytest.raises(AsrError, match=r"'training.batch_size' must be int"):
        load_config(cfg)


def test_base_chain_merges_and_override_wins(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  encoder:\n    output_size: 64\n    num_blocks: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  encoder:\n    num_blocks: 2\n")
    config = load_config(tmp_path / "child.yaml")
    assert config.model.encoder.output_size == 64 and config.model.encoder.num_blocks == 2
    assert config.model.encoder.attention_heads == 4  # untouched default


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(AsrError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = dataclasses.replace(load_config(REPO / "recipes/demo/conf/conformer.yaml"), vocab_size=303, input_dim=80)
    save_config(config, tmp_path / "train.yaml")
    assert load_config(tmp_path / "train.yaml") == config


def _is_decode_config(path: Path) -> bool:
    return "decode" in path.stem


SHIPPED = sorted(p for p in REPO.glob("**/conf/*.yaml") if ".venv" not in p.parts and "fixtures" not in p.parts)


def test_configs_are_shipped_for_every_recipe():
    names = {str(p.relative_to(REPO)) for p in SHIPPED}
    assert {"recipes/aishell/conf/conformer.yaml", "recipes/aishell/conf/chunk_conformer.yaml",
            "recipes/aishell/conf/decode.yaml", "recipes/aishell/conf/chunk_decode.yaml",
            "recipes/demo/conf/conformer.yaml"} <= names


@pytest.mark.parametrize("path", [p for p in SHIPPED if not _is_decode_config(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_training_config_loads_and_builds_a_model(path):
    config = dataclasses.replace(load_config(path), vocab_size=50, input_dim=80)
    assert isinstance(config, AsrConfig)
    model = build_model(config)
    names = set(model.state_dict())
    # PaddleSpeech parameter names (REFERENCE §8.2)
    assert "encoder.embed.conv.0.weight" in names and "ctc.ctc_lo.weight" in names
    assert "decoder.embed.0.weight" in names and "decoder.output_layer.weight" in names
    if config.model.encoder_type == "conformer":
        assert "encoder.encoders.0.self_attn.pos_bias_u" in names
        assert "encoder.encoders.0.conv_module.depthwise_conv.weight" in names


@pytest.mark.parametrize("path", [p for p in SHIPPED if _is_decode_config(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_decode_config_loads(path):
    conf = load_decode_config(path)
    assert set(conf.methods) <= {"ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"}
    assert conf.beam_size >= 1


def test_published_aishell_hyperparameters():
    full = load_config(REPO / "recipes/aishell/conf/conformer.yaml")
    chunk = load_config(REPO / "recipes/aishell/conf/chunk_conformer.yaml")
    assert (full.model.encoder.num_blocks, full.model.decoder.num_blocks, full.model.ctc_weight) == (12, 6, 0.3)
    assert (full.optim.lr, full.scheduler.warmup_steps, full.training.accum_grad) == (0.002, 25000, 8)
    assert chunk.model.encoder.causal and chunk.model.encoder.use_dynamic_chunk
    assert chunk.model.encoder.cnn_module_norm == "layer_norm" and chunk.optim.lr == 0.001
    assert load_decode_config(REPO / "recipes/aishell/conf/chunk_decode.yaml").decoding_chunk_size == 16


def test_decode_config_unknown_key_is_an_error(tmp_path):
    (tmp_path / "d.yaml").write_text("beam: 5\n")
    with pytest.raises(AsrError, match="unknown config key.*'beam'"):
        load_decode_config(tmp_path / "d.yaml")
