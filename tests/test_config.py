"""Strict configs: unknown keys and wrong types are errors that name the file and key."""

import dataclasses
from pathlib import Path

import pytest

from paddle_asr.config import AsrConfig, DecodeConfig, check_config, load_config, load_decode_config, save_config
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


def test_a_value_outside_its_choices_is_an_error_naming_file_and_key_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training:\n  amp: fp61\n")
    with pytest.raises(AsrError, match=r"bad.yaml: training.amp: 'fp61' is not one of 'off', 'fp16', 'bf16'"):
        load_config(cfg)
    cfg.write_text("model:\n  encoder:\n    input_layer: conv2d5\n")
    with pytest.raises(AsrError, match=r"bad.yaml: model.encoder.input_layer: 'conv2d5' is not one of"):
        load_config(cfg)
    (tmp_path / "d.yaml").write_text("methods: [ctc_greedy_search, atention]\n")
    with pytest.raises(AsrError, match=r"d.yaml: methods\[1\]: 'atention' is not one of 'ctc_greedy_search'"):
        load_decode_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("text,match", [
    ("model:\n  ctc_weight: 1.5\n", r"model.ctc_weight: 1.5 is not in \[0, 1\]"),
    ("training:\n  accum_grad: 0\n", r"training.accum_grad: 0 is not >= 1"),
    ("model:\n  encoder:\n    dropout_rate: -0.1\n", r"model.encoder.dropout_rate: -0.1 is not in \[0, 1\]"),
    ("training:\n  keep_checkpoints: 2\n  average_num: 5\n", r"training.keep_checkpoints: 2 would delete"),
    ("scheduler:\n  name: exponential\n  gamma: 1.5\n", r"scheduler.gamma is 1.5; set it in \(0, 1\]"),
    ("model:\n  encoder:\n    pos_enc_layer_type: abs_pos\n",
     r"model.encoder.selfattention_layer_type: must be selfattn with pos_enc_layer_type abs_pos"),
])
def test_a_value_out_of_range_is_an_error_naming_file_and_key_path(tmp_path, text, match):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(AsrError, match=r"bad.yaml: " + match):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("text,match", [
    ("beam_size: 0\n", r"beam_size: 0 is not >= 1"),
    ("decoding_chunk_size: 0\n", r"decoding_chunk_size: 0 is not -1 or >= 1"),
    ("cutoff_prob: 0.0\n", r"cutoff_prob: 0.0 is not in \(0, 1\]"),
    ("methods: []\n", r"methods: name at least one of"),
])
def test_a_decode_value_out_of_range_is_an_error(tmp_path, text, match):
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(AsrError, match=r"d.yaml: " + match):
        load_decode_config(tmp_path / "d.yaml")


def test_a_config_built_in_code_is_checked_the_same_way():
    check_config(AsrConfig())
    check_config(DecodeConfig())
    bad = dataclasses.replace(AsrConfig(), training=dataclasses.replace(AsrConfig().training, amp="fp61"))
    with pytest.raises(AsrError, match=r"here: training.amp: 'fp61' is not one of"):
        check_config(bad, "here")


def test_a_list_of_bases_merges_in_order_then_the_file_itself(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  encoder:\n    output_size: 64\n    num_blocks: 3\n"
                                     "    linear_units: 32\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("model:\n  encoder:\n    num_blocks: 4\n    attention_heads: 2\n")
    (tmp_path / "child.yaml").write_text("base: [a.yaml, sub/b.yaml]\nmodel:\n  encoder:\n    attention_heads: 8\n")
    enc = load_config(tmp_path / "child.yaml").model.encoder
    assert (enc.output_size, enc.linear_units) == (64, 32)  # only in a.yaml
    assert enc.num_blocks == 4  # the later base wins
    assert enc.attention_heads == 8  # the file's own keys win over every base
    (tmp_path / "swapped.yaml").write_text("base: [sub/b.yaml, a.yaml]\n")
    assert load_config(tmp_path / "swapped.yaml").model.encoder.num_blocks == 3


def test_a_base_starting_with_two_slashes_is_read_from_the_repository_top(tmp_path):
    (tmp_path / "c.yaml").write_text("base: [//conf/model/chunk_conformer.yaml, //conf/model/tiny_conformer.yaml]\n")
    enc = load_config(tmp_path / "c.yaml").model.encoder
    assert enc.causal and enc.cnn_module_norm == "layer_norm" and (enc.output_size, enc.num_blocks) == (64, 2)
    (tmp_path / "bad.yaml").write_text("base: [//conf/model/nope.yaml]\n")
    with pytest.raises(AsrError, match=r"conf/model/nope.yaml does not exist"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "worse.yaml").write_text("base: {model: u2}\n")
    with pytest.raises(AsrError, match=r"worse.yaml: 'base' must be a file name or a list of file names"):
        load_config(tmp_path / "worse.yaml")


@pytest.mark.parametrize("name,streaming", [("conformer", False), ("chunk_conformer", True), ("transformer", False),
                                            ("deepspeech2", False), ("deepspeech2_online", True)])
def test_streaming_follows_the_model_preset(name, streaming):
    """local/run_stages.sh adds the chunk decoding config for a streaming `--model`."""
    assert load_config(REPO / f"conf/model/{name}.yaml").model.streaming is streaming
    assert load_config(REPO / f"recipes/aishell/conf/{name}.yaml").model.streaming is streaming


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
    return "decode" in path.stem or path.parent.name == "decode"


# Every recipe's configs and every shared preset of the top-level conf/.
SHIPPED = sorted([*REPO.glob("recipes/*/conf/*.yaml"), *REPO.glob("conf/**/*.yaml")])


def test_configs_are_shipped_for_every_recipe():
    names = {str(p.relative_to(REPO)) for p in SHIPPED}
    assert {"recipes/aishell/conf/conformer.yaml", "recipes/aishell/conf/chunk_conformer.yaml",
            "recipes/aishell/conf/decode.yaml", "recipes/aishell/conf/chunk_decode.yaml",
            "recipes/aishell/conf/chunk_conformer_u2pp.yaml",
            "recipes/demo/conf/conformer.yaml", "recipes/demo/conf/chunk_decode.yaml"} <= names
    presets = {f"conf/model/{m}.yaml" for m in ("conformer", "chunk_conformer", "chunk_conformer_u2pp", "transformer",
                                                 "deepspeech2",
                                                 "deepspeech2_online", "demo_conformer", "demo_chunk_conformer",
                                                 "tiny_conformer")}
    assert presets | {"conf/decode/full.yaml", "conf/decode/chunk.yaml", "conf/decode/deepspeech2.yaml"} <= names


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", [p for p in SHIPPED if not _is_decode_config(p)], ids=_name)
def test_every_shipped_training_config_loads_and_builds_a_model(path):
    loaded = load_config(path)
    config = dataclasses.replace(loaded, vocab_size=50, input_dim=loaded.features.num_mel_bins)
    assert isinstance(config, AsrConfig)
    model = build_model(config)
    names = set(model.state_dict())
    if config.model.name == "deepspeech2":  # PaddleSpeech DeepSpeech2Model names (docs/deepspeech2.md)
        assert config.features.num_mel_bins == 161 and config.data.cmvn.endswith("fbank161")
        assert {"encoder.conv.conv.0.weight", "encoder.rnn.0.weight_ih_l0", "decoder.ctc_lo.weight"} <= names
        return
    # PaddleSpeech U2 parameter names (docs/paddlespeech.md)
    assert "encoder.embed.conv.0.weight" in names and "ctc.ctc_lo.weight" in names
    decoders = ["decoder."]
    if config.model.decoder.type == "bitransformer":  # PaddleSpeech BiTransformerDecoder
        decoders = ["decoder.left_decoder.", "decoder.right_decoder."]
        assert not [n for n in names if n.startswith("decoder.") and not n.startswith(tuple(decoders))]
        last = f"decoder.right_decoder.decoders.{config.model.decoder.r_num_blocks - 1}.feed_forward.w_1.weight"
        assert last in names
    for prefix in decoders:
        assert f"{prefix}embed.0.weight" in names and f"{prefix}output_layer.weight" in names
    if config.model.encoder_type == "conformer":
        assert "encoder.encoders.0.self_attn.pos_bias_u" in names
        assert "encoder.encoders.0.conv_module.depthwise_conv.weight" in names


@pytest.mark.parametrize("path", [p for p in SHIPPED if _is_decode_config(p)], ids=_name)
def test_every_shipped_decode_config_loads(path):
    from paddle_asr.decode.recognizer import METHODS

    conf = load_decode_config(path)
    assert set(conf.methods) <= set(METHODS) and conf.beam_size >= 1
    if "ctc_beam_search_lm" in conf.methods:  # the LM stage 0 builds (lm_order 5)
        assert conf.lm_path == "data/lm/char_5gram.arpa"


def test_published_deepspeech2_settings():
    offline = load_config(REPO / "recipes/aishell/conf/deepspeech2.yaml")
    online = load_config(REPO / "recipes/aishell/conf/deepspeech2_online.yaml")
    ds2 = offline.model.deepspeech2
    assert (ds2.num_rnn_layers, ds2.rnn_layer_size, ds2.rnn_direction, ds2.use_gru) == (5, 1024, "bidirect", False)
    assert online.model.deepspeech2.rnn_direction == "forward"
    assert (offline.optim.lr, offline.scheduler.name, offline.scheduler.gamma, offline.optim.grad_clip) == \
        (5e-4, "exponential", 0.93, 3.0)
    assert (offline.training.max_epoch, online.training.max_epoch, offline.training.batch_size) == (50, 30, 64)
    decode = load_decode_config(REPO / "recipes/aishell/conf/deepspeech2_decode.yaml")
    assert (decode.alpha, decode.beta, decode.beam_size, decode.cutoff_prob, decode.cutoff_top_n) == \
        (2.2, 4.3, 500, 0.99, 40)


def test_published_aishell_hyperparameters():
    full = load_config(REPO / "recipes/aishell/conf/conformer.yaml")
    chunk = load_config(REPO / "recipes/aishell/conf/chunk_conformer.yaml")
    assert (full.model.encoder.num_blocks, full.model.decoder.num_blocks, full.model.ctc_weight) == (12, 6, 0.3)
    assert (full.optim.lr, full.scheduler.warmup_steps, full.training.accum_grad) == (0.002, 25000, 8)
    assert chunk.model.encoder.causal and chunk.model.encoder.use_dynamic_chunk
    assert chunk.model.encoder.cnn_module_norm == "layer_norm" and chunk.optim.lr == 0.001
    assert load_decode_config(REPO / "recipes/aishell/conf/chunk_decode.yaml").decoding_chunk_size == 16


def test_published_u2pp_settings():
    """PaddleSpeech's WenetSpeech U2++ network and schedule on the AISHELL streaming Conformer."""
    u2pp = load_config(REPO / "recipes/aishell/conf/chunk_conformer_u2pp.yaml")
    dec, enc = u2pp.model.decoder, u2pp.model.encoder
    assert (dec.type, dec.num_blocks, dec.r_num_blocks, dec.reverse_weight) == ("bitransformer", 3, 3, 0.3)
    assert (dec.self_attention_dropout_rate, dec.src_attention_dropout_rate, enc.attention_dropout_rate) == (0.1,) * 3
    assert u2pp.model.streaming and enc.cnn_module_norm == "layer_norm" and u2pp.model.ctc_weight == 0.3
    assert (u2pp.optim.lr, u2pp.scheduler.warmup_steps, u2pp.training.accum_grad, u2pp.training.max_epoch) == (
        0.002, 25000, 8, 150)


@pytest.mark.parametrize("decoder, match", [
    ("{type: bitransformer, r_num_blocks: 3}", "reverse_weight: 0.0 must lie strictly between 0 and 1"),
    ("{type: bitransformer, reverse_weight: 0.3}", "r_num_blocks: the bitransformer decoder needs at least 1"),
    ("{type: bitransformer, r_num_blocks: 3, reverse_weight: 1.0}", "reverse_weight: 1.0 must lie strictly"),
    ("{r_num_blocks: 3}", "apply to type: bitransformer only"),
    ("{type: bitransformer2}", "model.decoder.type: 'bitransformer2' is not one of"),
])
def test_a_bitransformer_needs_both_r_num_blocks_and_reverse_weight(tmp_path, decoder, match):
    (tmp_path / "c.yaml").write_text(f"model:\n  decoder: {decoder}\n")
    with pytest.raises(AsrError, match=match):
        load_config(tmp_path / "c.yaml")


def test_decode_config_unknown_key_is_an_error(tmp_path):
    (tmp_path / "d.yaml").write_text("beam: 5\n")
    with pytest.raises(AsrError, match="unknown config key.*'beam'"):
        load_decode_config(tmp_path / "d.yaml")


def test_voice_perturbation_bounds_are_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("voice_perturb: {enabled: true, min_warp: 1.2, max_warp: 0.9}\n")
    with pytest.raises(AsrError, match=r"bad.yaml.*voice_perturb.min_warp: 1.2 is above max_warp 0.9"):
        load_config(cfg)
    cfg.write_text("voice_perturb: {enabled: true, envelope_db: -3}\n")
    with pytest.raises(AsrError, match=r"bad.yaml: voice_perturb.envelope_db: -3"):
        load_config(cfg)
    cfg.write_text("voice_perturb: {enabled: true, warp: 1.1}\n")
    with pytest.raises(AsrError, match=r"bad.yaml.*'voice_perturb.warp'"):
        load_config(cfg)


@pytest.mark.parametrize("other,training,match", [
    ("speed_perturb: {enabled: true}", "", "speed perturbation computes a new fbank every epoch"),
    ("voice_perturb: {enabled: true, min_warp: 0.9, max_warp: 1.1}", "", r"VTLP \(voice_perturb warps 0.9-1.1\)"),
    ("", "num_workers: 2, ", "set num_workers: 0"),
    ("data: {train_shards: data/train/shards/shards.list}", "", "streams the audio from tar shards"),
])
def test_a_feature_cache_with_what_changes_the_fbank_every_epoch_is_an_error(tmp_path: Path, other, training,
                                                                              match) -> None:
    cfg = tmp_path / "cache.yaml"
    cfg.write_text(f"{other}\ntraining: {{{training}cache_features: false}}\n")
    load_config(cfg)  # fine without the cache
    cfg.write_text(f"{other}\ntraining: {{{training}cache_features: true}}\n")
    with pytest.raises(AsrError, match=rf"cache.yaml.*training.cache_features: .*{match}"):
        load_config(cfg)
    cfg.write_text("voice_perturb: {enabled: true, min_warp: 1.0, max_warp: 1.0, high_cut_db: 25}\n"
                   "training: {cache_features: true}\n")
    assert load_config(cfg).training.cache_features  # a fixed warp and the envelope draws are cached fine
