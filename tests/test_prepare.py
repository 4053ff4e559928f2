"""Stage 0 on a hand-built AISHELL-layout corpus with bad files: each is reported by id, none crashes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from paddle_asr.config import FeatureConfig
from paddle_asr.data.corpora.aishell import safe_extract
from paddle_asr.data.prepare import prepare_cmvn, prepare_data
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.errors import AsrError
from tests.conftest import real_fixture


def _wav_bytes(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((int(seconds * rate), channels)) * 3000).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _make_corpus(root: Path, files: dict[str, bytes], transcript: str) -> Path:
    """files: 'train/S0001/BAC009S0001W0001.wav' -> bytes, packed one archive per speaker."""
    corpus = root / "data_aishell"
    (corpus / "wav").mkdir(parents=True)
    (corpus / "transcript").mkdir()
    by_speaker: dict[str, dict[str, bytes]] = {}
    for name, data in files.items():
        by_speaker.setdefault(name.split("/")[1], {})[name] = data
    for speaker, members in by_speaker.items():
        with tarfile.open(corpus / "wav" / f"{speaker}.tar.gz", "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (corpus / "transcript" / "aishell_transcript_v0.8.txt").write_text(transcript, encoding="utf-8")
    return root


def test_bad_files_are_left_out_and_reported_by_id(tmp_path):
    real = real_fixture("aishell-BAC009S0724W0121.wav").read_bytes()
    files = {
        "train/S0001/BAC009S0001W0001.wav": real,
        "train/S0001/BAC009S0001W0002.wav": _wav_bytes(1.5),
        "train/S0001/BAC009S0001W0003.wav": _wav_bytes(1.0, rate=8000),  # wrong rate
        "train/S0001/BAC009S0001W0004.wav": real[:30],  # truncated header
        "train/S0001/BAC009S0001W0005.wav": _wav_bytes(1.0, channels=2),  # stereo
        "train/S0001/BAC009S0001W0006.wav": _wav_bytes(1.0),  # no transcript line
        "dev/S0002/BAC009S0002W0001.wav": _wav_bytes(1.2),
        "test/S0003/BAC009S0003W0001.wav": real,
        "test/S0003/BAC009S0003W0002.wav": _wav_bytes(1.0),  # empty transcript
    }
    transcript = "\n".join([
        "BAC009S0001W0001 广州市 房地产 中介 协会 分析",
        "BAC009S0001W0002 你好   世界",  # several spaces, as in the real file
        "BAC009S0001W0003 你好",
        "BAC009S0001W0004 你好",
        "BAC009S0001W0005 你好",
        "BAC009S0002W0001 世界",
        "BAC009S0003W0001 广州市 房地产",
        "BAC009S0003W0002",
        "BAC009S9999W0001 不在 任何 集合",  # transcript line without audio: simply unused
    ]) + "\n"
    corpus = _make_corpus(tmp_path / "corpus", files, transcript)
    logs: list[str] = []
    summary = prepare_data("aishell", corpus, tmp_path / "data", FeatureConfig(), nj=1, log=logs.append)
    hours = pytest.approx((68496 / 16000 + 1.5) / 3600, abs=1e-4)
    assert summary["splits"]["train"] == {"kept": 2, "dropped": 4, "hours": hours, "unknown_units": 0}
    dropped = dict(line.split("\t") for line in (tmp_path / "data/train/dropped.txt").read_text().splitlines())
    assert dropped["BAC009S0001W0003"] == "sample rate 8000 Hz, expected 16000 Hz"
    assert dropped["BAC009S0001W0004"].startswith("unreadable audio")
    assert dropped["BAC009S0001W0005"] == "2 channels, expected mono"
    assert dropped["BAC009S0001W0006"] == "no transcript line"
    assert "empty transcript" in (tmp_path / "data/test/dropped.txt").read_text()
    assert any("left out BAC009S0001W0004" in line for line in logs)
    text = dict(line.split(" ", 1) for line in (tmp_path / "data/train/text").read_text(encoding="utf-8").splitlines())
    assert text == {"BAC009S0001W0001": "广州市房地产中介协会分析", "BAC009S0001W0002": "你好世界"}
    tok = CharTokenizer.from_file(tmp_path / "data/lang_char/vocab.txt")
    assert tok.units[0] == "<blank>" and tok.units[1] == "<unk>" and tok.units[-1] == "<eos>"
    assert tok.encode("广州你好")[1] == 0 and tok.encode("上海")[1] == 2  # dev/test-only characters are <unk>
    prepare_cmvn(tmp_path / "data", FeatureConfig(), tmp_path / "data/train/global_cmvn", nj=1, log=logs.append)
    assert json.loads((tmp_path / "data/train/global_cmvn").read_text())["frame_num"] == 426 + 148
    # Other features (DeepSpeech2's 161 bins) get their own file; the 80-bin one stays.
    fbank161 = FeatureConfig(num_mel_bins=161)
    prepare_cmvn(tmp_path / "data", fbank161, tmp_path / "data/train/global_cmvn_fbank161", nj=1, log=logs.append)
    assert len(json.loads((tmp_path / "data/train/global_cmvn_fbank161").read_text())["mean_stat"]) == 161
    assert len(json.loads((tmp_path / "data/train/global_cmvn").read_text())["mean_stat"]) == 80

    # A second run reuses the complete output and says so; nothing is rebuilt.
    logs.clear()
    prepare_data("aishell", corpus, tmp_path / "data", FeatureConfig(), nj=1, log=logs.append)
    prepare_cmvn(tmp_path / "data", FeatureConfig(), tmp_path / "data/train/global_cmvn", nj=1, log=logs.append)
    assert any("reusing the complete output" in line for line in logs)
    assert any("reusing" in line and "global_cmvn" in line for line in logs)


def test_duplicate_transcript_id_names_file_and_line(tmp_path):
    files = {"train/S0001/BAC009S0001W0001.wav": _wav_bytes(1.0)}
    corpus = _make_corpus(tmp_path / "c", files, "BAC009S0001W0001 你好\nBAC009S0001W0001 世界\n")
    with pytest.raises(AsrError, match=r"aishell_transcript_v0.8.txt:2: utterance id 'BAC009S0001W0001' appears twice"):
        prepare_data("aishell", corpus, tmp_path / "data", FeatureConfig(), nj=1, log=lambda *_: None)
    assert not (tmp_path / "data").exists()  # nothing half-written


def test_missing_corpus_says_where_it_looked(tmp_path):
    with pytest.raises(AsrError, match="no AISHELL-1 corpus under"):
        prepare_data("aishell", tmp_path, tmp_path / "data", FeatureConfig(), log=lambda *_: None)


def test_archive_with_parent_paths_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(AsrError, match="unsafe"):
        safe_extract(evil, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
