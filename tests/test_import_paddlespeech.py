"""import-paddlespeech: what it reads from a PaddleSpeech folder, and its errors on folders it cannot use."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from paddle_asr.config import load_config
from paddle_asr.errors import AsrError
from paddle_asr.import_paddlespeech import import_paddlespeech

FOLDER = Path(__file__).resolve().parent / "fixtures" / "paddlespeech" / "conformer"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ps"
    shutil.copytree(FOLDER, dst)
    return dst


def _edit_config(folder: Path, edit) -> None:
    path = folder / "conf" / "model.yaml"
    conf = yaml.safe_load(path.read_text())
    edit(conf)
    path.write_text(yaml.safe_dump(conf))


def test_import_writes_a_complete_experiment(tmp_path):
    exp = import_paddlespeech(FOLDER, tmp_path / "exp" / "ps", log=lambda *_: None)
    config = load_config(exp / "train.yaml")
    assert config.model.encoder_type == "conformer" and config.model.encoder.cnn_module_norm == "batch_norm"
    assert config.features.frame_shift_ms == 10.0 and config.features.num_mel_bins == 80
    assert (exp / "checkpoints" / "avg_1.pdparams").is_file()
    assert (exp / "vocab.txt").read_text() == (FOLDER / "data/lang_char/vocab.txt").read_text()


def test_an_unknown_paddlespeech_setting_is_an_error_naming_it(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, lambda c: c["encoder_conf"].update(use_magic=True))
    with pytest.raises(AsrError, match=r"model.yaml: encoder_conf.use_magic is not a setting"):
        import_paddlespeech(folder, tmp_path / "exp", log=lambda *_: None)
    assert not (tmp_path / "exp").exists()


def test_a_checkpoint_that_does_not_fit_the_config_lists_the_tensors(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, lambda c: c["decoder_conf"].update(num_blocks=3))
    with pytest.raises(AsrError, match=r"missing in checkpoint: decoder.decoders.2"):
        import_paddlespeech(folder, tmp_path / "exp", log=lambda *_: None)
    assert not (tmp_path / "exp").exists()


def test_a_folder_without_a_model_config_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrError, match="has no PaddleSpeech model config"):
        import_paddlespeech(tmp_path / "empty", tmp_path / "exp", log=lambda *_: None)


def test_several_checkpoints_need_a_choice(tmp_path):
    folder = _copy(tmp_path)
    ckpt = next(folder.rglob("avg_1.pdparams"))
    shutil.copyfile(ckpt, ckpt.parent / "3.pdparams")
    shutil.copyfile(ckpt, ckpt.parent / "avg_2.pdparams")
    with pytest.raises(AsrError, match="several checkpoints"):
        import_paddlespeech(folder, tmp_path / "exp", log=lambda *_: None)
    exp = import_paddlespeech(folder, tmp_path / "exp", checkpoint=ckpt.parent / "3.pdparams", log=lambda *_: None)
    assert (exp / "checkpoints" / "avg_1.pdparams").is_file()


# The network of PaddleSpeech's examples/wenetspeech/asr1/conf/chunk_conformer_u2pp.yaml, verbatim.
U2PP_YAML = """
cmvn_file:
cmvn_file_type: "json"
encoder: conformer
encoder_conf:
    output_size: 512    # dimension of attention
    attention_heads: 8
    linear_units: 2048  # the number of units of position-wise feed forward
    num_blocks: 12      # the number of encoder blocks
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: conv2d # encoder input type, you can chose conv2d, conv2d6 and conv2d8
    normalize_before: True
    use_cnn_module: True
    cnn_module_kernel: 15
    activation_type: swish
    pos_enc_layer_type: rel_pos
    selfattention_layer_type: rel_selfattn
    causal: true
    use_dynamic_chunk: true
    cnn_module_norm: 'layer_norm' # using nn.LayerNorm makes model converge faster
    use_dynamic_left_chunk: false
decoder: bitransformer
decoder_conf:
    attention_heads: 8
    linear_units: 2048
    num_blocks: 3     # the number of encoder blocks
    r_num_blocks: 3   #only for bitransformer
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    self_attention_dropout_rate: 0.1
    src_attention_dropout_rate: 0.1
model_conf:
    ctc_weight: 0.3
    lsm_weight: 0.1     # label smoothing option
    length_normalized_loss: false
    reverse_weight: 0.3    # only for bitransformer decoder
    init_type: 'kaiming_uniform' # !Warning: need to convergence
"""


def test_paddlespeech_s_wenetspeech_u2pp_config_converts_to_a_bitransformer(tmp_path):
    """The released U2++ network maps key for key (the golden U2++ fixture, in the same layout, is
    imported and decoded in test_paddlespeech_parity); its parameters carry PaddleSpeech's names."""
    from paddle_asr.config import check_config
    from paddle_asr.import_paddlespeech import convert_config
    from paddle_asr.models.registry import build_model

    config = convert_config(tmp_path, yaml.safe_load(U2PP_YAML), tmp_path / "model.yaml", 5538)
    check_config(config)
    dec = config.model.decoder
    assert (dec.type, dec.num_blocks, dec.r_num_blocks, dec.reverse_weight, dec.attention_heads) == (
        "bitransformer", 3, 3, 0.3, 8)
    assert config.model.encoder.output_size == 512 and config.model.streaming
    names = set(build_model(config).state_dict())
    assert {"decoder.left_decoder.decoders.2.src_attn.linear_q.weight", "decoder.right_decoder.decoders.2.norm3.bias",
            "decoder.right_decoder.output_layer.weight", "decoder.left_decoder.embed.0.weight"} <= names


def test_a_transformer_config_s_reverse_weight_is_dropped_as_paddlespeech_does(tmp_path):
    """PaddleSpeech's WenetSpeech chunk_conformer.yaml (transformer) names reverse_weight: 0.0."""
    folder = _copy(tmp_path)
    _edit_config(folder, lambda c: (c["model_conf"].update(reverse_weight=0.0),
                                    c["decoder_conf"].update(r_num_blocks=3)))
    config = load_config(import_paddlespeech(folder, tmp_path / "exp", log=lambda *_: None) / "train.yaml")
    assert (config.model.decoder.type, config.model.decoder.r_num_blocks, config.model.decoder.reverse_weight) == (
        "transformer", 0, 0.0)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(decoder="transducer"), "decoder 'transducer' is not supported"),
    (lambda c: (c.update(decoder="bitransformer"), c["decoder_conf"].update(r_num_blocks=1)),
     "reverse_weight: 0.0 must lie strictly between 0 and 1"),
])
def test_a_decoder_we_cannot_build_is_an_error(tmp_path, edit, match):
    folder = _copy(tmp_path)
    _edit_config(folder, edit)
    with pytest.raises(AsrError, match=match):
        import_paddlespeech(folder, tmp_path / "exp", log=lambda *_: None)
    assert not (tmp_path / "exp").exists()
