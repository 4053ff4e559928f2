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
