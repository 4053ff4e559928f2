"""Strict configs: unknown keys and wrong types are errors that name the file and key."""

import dataclasses
from pathlib import Path

import pytest

from paddle_asr.config import AsrConfig, load_config, save_config
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
    config = dataclasses.replace(load_config(REPO / "recipes/demo/conf/conformer_ctc.yaml"), vocab_size=303, input_dim=80)
    save_config(config, tmp_path / "train.yaml")
    assert load_config(tmp_path / "train.yaml") == config


@pytest.mark.parametrize("path", sorted(REPO.glob("recipes/*/conf/*.yaml")) + sorted(REPO.glob("conf/*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads_and_builds_a_model(path):
    config = dataclasses.replace(load_config(path), vocab_size=50, input_dim=80)
    assert isinstance(config, AsrConfig)
    model = build_model(config)
    names = set(model.state_dict())
    # PaddleSpeech parameter names (REFERENCE §8.2)
    assert "encoder.embed.conv.0.weight" in names and "ctc.ctc_lo.weight" in names
    assert "encoder.encoders.0.self_attn.pos_bias_u" in names
    assert "encoder.encoders.0.conv_module.depthwise_conv.weight" in names
