"""The bad-input catalogue: for every way data, disk, config or a download can go wrong, a real file
built here, and the behaviour the user gets — a clear message naming the file, line or utterance
and what to do, nothing lost, nothing written outside its folder. docs/bad_input.md lists the
rows with the test of each."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import paddle
import pytest
import soundfile as sf

from paddle_asr.config import DataConfig, FeatureConfig, load_config
from paddle_asr.data.corpora import aishell
from paddle_asr.data.manifest import read_manifest
from paddle_asr.data.prepare import prepare_data
from paddle_asr.errors import AsrError
from paddle_asr.features import compute_fbank
from tests.conftest import REPO, real_fixture
from tests.test_librispeech import make_librispeech
from tests.test_prepare import _make_corpus
from tests.test_training import write_config

REAL_WAV = real_fixture("aishell-BAC009S0724W0121.wav")
REAL_TEXT = "广州市房地产中介协会分析"


def real_samples() -> np.ndarray:
    samples, rate = sf.read(REAL_WAV, dtype="int16")
    assert rate == 16000
    return samples


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def prepare(corpus: Path, data: Path, corpus_name: str = "aishell", **kw) -> tuple[dict, list[str]]:
    logs: list[str] = []
    summary = prepare_data(corpus_name, corpus, data, FeatureConfig(), nj=1, log=logs.append, **kw)
    return summary, logs


def dropped(data: Path, split: str) -> dict[str, str]:
    lines = (data / split / "dropped.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines)


# ------------------------------------------------------------------------------------------ audio
def test_bad_audio_files_are_left_out_with_their_reason_and_good_formats_are_kept(tmp_path):
    """Stage 0 on an AISHELL-layout corpus: every bad WAV is left out and reported by id with its
    reason; 8-bit and 32-bit float WAVs are kept."""
    x = real_samples()
    good = wav_bytes(x)
    float_nan = x.astype(np.float32) / 32768
    float_nan[1000:1010] = np.nan
    files = {
        "train/S0001/BAC009S0001W0001.wav": good,
        "train/S0001/BAC009S0001W0002.wav": good[:30],                       # truncated inside the header
        "train/S0001/BAC009S0001W0003.wav": good[: len(good) // 2],          # truncated inside the samples
        "train/S0001/BAC009S0001W0004.wav": b"",                             # zero-length
        "train/S0001/BAC009S0001W0005.wav": wav_bytes(x[::2], rate=8000),    # 8 kHz
        "train/S0001/BAC009S0001W0006.wav": wav_bytes(np.repeat(x, 3)[: len(x) * 44100 // 16000], rate=44100),
        "train/S0001/BAC009S0001W0007.wav": wav_bytes(np.stack([x, x], axis=1)),  # stereo
        "train/S0001/BAC009S0001W0008.wav": wav_bytes(x, subtype="PCM_U8"),  # 8-bit: kept
        "train/S0001/BAC009S0001W0009.wav": wav_bytes(x.astype(np.float32) / 32768, subtype="FLOAT"),  # kept
        "train/S0001/BAC009S0001W0010.wav": wav_bytes(float_nan, subtype="FLOAT"),  # NaN samples
        "train/S0001/BAC009S0001W0011.wav": wav_bytes(np.zeros(0, np.int16)),  # a header and no samples
        "dev/S0002/BAC009S0002W0001.wav": good,
        "test/S0003/BAC009S0003W0001.wav": good,
    }
    transcript = "".join(f"{Path(k).stem} {REAL_TEXT}\n" for k in files)
    corpus = _make_corpus(tmp_path / "corpus", files, transcript)
    # A directory where a file should be.
    aishell.extract_speaker_archives(corpus / "data_aishell", log=lambda *_: None)
    (corpus / "data_aishell/wav/train/S0001/BAC009S0001W0012.wav").mkdir()
    with open(corpus / "data_aishell/transcript/aishell_transcript_v0.8.txt", "a", encoding="utf-8") as f:
        f.write(f"BAC009S0001W0012 {REAL_TEXT}\n")

    summary, logs = prepare(corpus, tmp_path / "data")
    reasons = dropped(tmp_path / "data", "train")
    expected = {
        "BAC009S0001W0002": r"unreadable audio: .*BAC009S0001W0002.wav is not a readable audio file \(.*\)",
        "BAC009S0001W0003": r"unreadable audio: .*BAC009S0001W0003.wav is truncated: its header declares 136992 bytes "
                            r"of samples, the file holds 68474",
        "BAC009S0001W0004": r"unreadable audio: .*BAC009S0001W0004.wav is an empty file \(0 bytes\)",
        "BAC009S0001W0005": r"sample rate 8000 Hz, expected 16000 Hz",
        "BAC009S0001W0006": r"sample rate 44100 Hz, expected 16000 Hz",
        "BAC009S0001W0007": r"2 channels, expected mono",
        "BAC009S0001W0010": r"unreadable audio: .*BAC009S0001W0010.wav has NaN or infinite samples",
        "BAC009S0001W0011": r"audio has no samples",
        "BAC009S0001W0012": r"unreadable audio: .*BAC009S0001W0012.wav is a directory, not an audio file",
    }
    assert set(reasons) == set(expected)
    for key, pattern in expected.items():
        assert re.fullmatch(pattern, reasons[key]), (key, reasons[key])
        assert any(f"left out {key}: " in line for line in logs)
    kept = {u.key for u in read_manifest(tmp_path / "data/train/data.list")}
    assert kept == {"BAC009S0001W0001", "BAC009S0001W0008", "BAC009S0001W0009"}
    assert summary["splits"]["train"]["dropped"] == len(expected)


def test_8bit_and_float_audio_give_the_features_of_16bit_audio(tmp_path):
    """Every sample format is scaled to the int16 range Kaldi's fbank expects."""
    from paddle_asr.data.audio import read_audio

    x = real_samples()
    feats = {}
    for subtype, samples in (("PCM_16", x), ("PCM_U8", x), ("FLOAT", x.astype(np.float32) / 32768), ("PCM_24", x)):
        path = tmp_path / f"{subtype}.wav"
        path.write_bytes(wav_bytes(samples, subtype=subtype))
        waveform, _ = read_audio(path)
        feats[subtype] = compute_fbank(waveform, FeatureConfig())
    for subtype in ("FLOAT", "PCM_24"):
        np.testing.assert_allclose(feats[subtype], feats["PCM_16"], atol=1e-4)
    # 8 bits add quantisation noise but keep the scale: where there is speech the log energies agree
    # on average (a wrong scale would shift them all by 2 ln 256 = 11).
    energy = feats["PCM_16"].mean(axis=1)
    loud = energy > np.percentile(energy, 80)
    assert abs(feats["PCM_U8"][loud].mean() - feats["PCM_16"][loud].mean()) < 1.0


def test_corrupt_and_truncated_flac_are_left_out_with_their_reason(tmp_path):
    make_librispeech(tmp_path / "corpus")
    chapter = tmp_path / "corpus/LibriSpeech/train-clean-100/103/1241"
    flac = (chapter / "103-1241-0000.flac").read_bytes()
    corrupt = bytearray(flac)
    for i in range(len(corrupt) // 2, len(corrupt) // 2 + 500):
        corrupt[i] ^= 0x5A
    (chapter / "103-1241-0000.flac").write_bytes(bytes(corrupt))
    (chapter / "103-1241-0001.flac").write_bytes(flac[: len(flac) // 2])
    prepare(tmp_path / "corpus", tmp_path / "data", "librispeech", data_conf=DataConfig(units="char"),
            sets={"train": ["train-clean-100"], "dev": ["dev-clean"], "test": ["dev-clean"]})
    reasons = dropped(tmp_path / "data", "train")
    for key in ("103-1241-0000", "103-1241-0001"):
        expected = rf"{key}.flac does not decode to its end \(.*\): the file is corrupt or truncated"
        assert re.search(expected, reasons[key])
    assert not {"103-1241-0000", "103-1241-0001"} & {u.key for u in read_manifest(tmp_path / "data/train/data.list")}


def test_transcript_lines_without_audio_are_counted_and_listed(tmp_path):
    files = {"train/S0001/BAC009S0001W0001.wav": wav_bytes(real_samples()),
             "dev/S0002/BAC009S0002W0001.wav": wav_bytes(real_samples()),
             "test/S0003/BAC009S0003W0001.wav": wav_bytes(real_samples())}
    transcript = "".join(f"{Path(k).stem} {REAL_TEXT}\n" for k in files) + "BAC009S0009W0001 没有 音频\n"
    corpus = _make_corpus(tmp_path / "corpus", files, transcript)
    summary, logs = prepare(corpus, tmp_path / "data")
    assert summary["unused_transcripts"] == 1
    assert (tmp_path / "data/unused_transcripts.txt").read_text() == "BAC009S0009W0001\n"
    assert any("1 transcript lines have no audio file" in line for line in logs)


def test_audio_missing_at_training_time_names_the_utterance(tiny_recipe, tmp_path):
    manifest = tiny_recipe / "data/train_missing/data.list"
    manifest.parent.mkdir(exist_ok=True)
    lines = (tiny_recipe / "data/train/data.list").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["wav"] = str(tmp_path / "gone.wav")
    manifest.write_text("\n".join([json.dumps(first, ensure_ascii=False)] + lines[1:]) + "\n", encoding="utf-8")
    config = write_train_config(tiny_recipe, "missing_audio", data_train="data/train_missing/data.list")
    proc = train(tiny_recipe, config, "exp/missing_audio")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"error: training utterance {first['key']}: {tmp_path / 'gone.wav'} does not exist. The audio changed "
            "after stage 0") in proc.stderr


# ------------------------------------------------------------------------------------------- text
def test_text_is_normalised_and_characters_outside_the_units_are_counted(tmp_path):
    x = wav_bytes(real_samples())
    files = {"train/S0001/BAC009S0001W0001.wav": x, "train/S0001/BAC009S0001W0002.wav": x,
             "dev/S0002/BAC009S0002W0001.wav": x, "dev/S0002/BAC009S0002W0002.wav": x,
             "test/S0003/BAC009S0003W0001.wav": x, "test/S0003/BAC009S0003W0002.wav": x}
    transcript = "\n".join([
        "BAC009S0001W0001 广州市，房地产 中介协会。",       # Chinese punctuation
        "BAC009S0001W0002 ＡＰＰ 下载 １２３ 次 app!",        # full-width Latin and digits, ASCII punctuation
        "BAC009S0002W0001 广州 上海",                        # 上海: not in the training units
        "BAC009S0002W0002 。，！",                          # nothing left after punctuation
        "BAC009S0003W0001 下载 ＡＰＰ",
        "BAC009S0003W0002 北京 北京 房地产",                  # 北, 京: twice each
    ]) + "\n"
    corpus = _make_corpus(tmp_path / "corpus", files, transcript)
    summary, logs = prepare(corpus, tmp_path / "data")
    text = dict(line.split(" ", 1) for line in (tmp_path / "data/train/text").read_text(encoding="utf-8").splitlines())
    assert text == {"BAC009S0001W0001": "广州市房地产中介协会", "BAC009S0001W0002": "APP下载123次APP"}
    assert dropped(tmp_path / "data", "dev") == {"BAC009S0002W0002": "empty transcript"}
    oov = (tmp_path / "data/dev/oov.txt").read_text(encoding="utf-8")
    assert oov == "BAC009S0002W0001\t2\t上 海\n"
    assert (tmp_path / "data/test/oov.txt").read_text(encoding="utf-8") == "BAC009S0003W0002\t4\t京 北\n"
    assert summary["splits"]["dev"]["unknown_units"] == 2 and summary["splits"]["test"]["unknown_units"] == 4
    assert summary["splits"]["train"]["unknown_units"] == 0
    assert any("dev: 2 characters in 1 utterances are not among the units and become <unk>" in line for line in logs)


def test_a_transcript_that_is_not_utf8_names_file_and_line(tmp_path):
    files = {"train/S0001/BAC009S0001W0001.wav": wav_bytes(real_samples())}
    corpus = _make_corpus(tmp_path / "corpus", files, "")
    path = corpus / "data_aishell/transcript/aishell_transcript_v0.8.txt"
    path.write_bytes("BAC009S0001W0001 你好\n".encode() + "BAC009S0001W0002 世界\n".encode("gbk"))
    with pytest.raises(AsrError, match=r"aishell_transcript_v0.8.txt:2: not UTF-8 text; convert the file to UTF-8"):
        prepare(corpus, tmp_path / "data")
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------------------- archives
def _archive(path: Path, members: list[tarfile.TarInfo], data: bytes = b"bad") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, 3 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("members", [
    [_member("../outside.txt")],
    [_member("/tmp/paddle_asr_absolute_path_test.txt")],
    [_member("link", tarfile.SYMTYPE, "../../outside_target"), _member("link/x.txt")],
    [_member("hard", tarfile.LNKTYPE, "../outside.txt")],
], ids=["parent", "absolute", "symlink", "hardlink"])
def test_archives_that_would_write_outside_their_folder_are_refused(tmp_path, members):
    (tmp_path / "outside.txt").write_text("mine")
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    archive = _archive(tmp_path / "evil.tar.gz", members)
    with pytest.raises(AsrError, match=r"cannot extract .*evil.tar.gz .*corrupt, truncated or unsafe"):
        aishell.safe_extract(archive, dest)
    assert (tmp_path / "outside.txt").read_text() == "mine"
    assert not Path("/tmp/paddle_asr_absolute_path_test.txt").exists()
    assert not (tmp_path / "outside_target").exists()


def test_a_truncated_archive_is_a_clear_error_and_a_rerun_resumes(tmp_path):
    x = wav_bytes(real_samples())
    files = {"train/S0001/BAC009S0001W0001.wav": x, "train/S0002/BAC009S0002W0001.wav": x,
             "dev/S0003/BAC009S0003W0001.wav": x, "test/S0004/BAC009S0004W0001.wav": x}
    transcript = "".join(f"{Path(k).stem} {REAL_TEXT}\n" for k in files)
    corpus = _make_corpus(tmp_path / "corpus", files, transcript)
    archive = corpus / "data_aishell/wav/S0002.tar.gz"
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) // 2])  # a download cut short
    with pytest.raises(AsrError, match=r"cannot extract .*S0002.tar.gz .*download it again"):
        prepare(corpus, tmp_path / "data")
    assert (corpus / "data_aishell/wav/S0001.tar.gz.extracted").exists()  # finished before the bad one
    assert not (corpus / "data_aishell/wav/S0002.tar.gz.extracted").exists()
    assert not (tmp_path / "data").exists()
    archive.write_bytes(whole)  # downloaded again
    summary, logs = prepare(corpus, tmp_path / "data")
    assert any("4 speaker archives, 3 unpacked now, 1 already unpacked" in line for line in logs)
    assert summary["splits"]["train"]["kept"] == 2
    assert sf.info(str(corpus / "data_aishell/wav/train/S0002/BAC009S0002W0001.wav")).frames == len(real_samples())


# --------------------------------------------------------------------------------------- training
def write_train_config(recipe: Path, name: str, *, data_train: str = "data/train/data.list", max_epoch: int = 1,
                       max_duration: float = 20.0, max_nonfinite: int = 20) -> str:
    """test_training's tiny deterministic Conformer, with the data and limits these tests change."""
    base = write_config(recipe, f"{name}_base", max_epoch=max_epoch)
    path = recipe / "conf" / f"{name}.yaml"
    path.write_text(f"base: {Path(base).name}\ndata:\n  train: {data_train}\n"
                    f"training:\n  max_duration_s: {max_duration}\n"
                    f"  max_nonfinite_batches: {max_nonfinite}\n")
    return str(path.relative_to(recipe))


def train_cmd(config: str, exp: str) -> list[str]:
    return [sys.executable, "-m", "paddle_asr.cli", "train", "--config", config, "--exp_dir", exp]


def train(recipe: Path, config: str, exp: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(config, exp), cwd=recipe, capture_output=True, text=True, timeout=600)


def with_extra_utterance(recipe: Path, name: str, key: str, wav: Path, seconds: float, text: str = "你好") -> str:
    """data/<name>/data.list: the training manifest plus one utterance (written after stage 0)."""
    manifest = recipe / "data" / name / "data.list"
    manifest.parent.mkdir(exist_ok=True)
    extra = json.dumps({"key": key, "wav": str(wav), "duration": seconds, "text": text}, ensure_ascii=False)
    manifest.write_text((recipe / "data/train/data.list").read_text(encoding="utf-8") + extra + "\n", encoding="utf-8")
    return str(manifest.relative_to(recipe))


def test_nonfinite_loss_skips_the_batch_counts_it_and_stops_past_the_limit(tiny_recipe):
    """A learning rate of 1e12 makes the parameters overflow within a few updates; every batch after
    that has a NaN or infinite loss. Each is skipped (no update), logged with its utterances and
    counted; training goes on to the next batch until more than max_nonfinite_batches were skipped."""
    config = write_train_config(tiny_recipe, "diverge", max_epoch=3, max_nonfinite=3)
    path = tiny_recipe / config
    path.write_text(path.read_text() + "optim:\n  lr: 1.0e+12\n")
    proc = train(tiny_recipe, config, "exp/diverge")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    skips = [line for line in proc.stdout.splitlines() if "batch skipped" in line]
    assert len(skips) == 4, proc.stdout[-3000:]  # three tolerated, the fourth stops training
    for n, line in enumerate(skips, 1):
        assert re.search(rf"loss (nan|inf|-inf) \(non-finite on some process\), batch skipped \({n} so far\); its "
                         r"utterances: (\S+ ){3}\S+$", line), line
    batches = [int(re.search(r"batch (\d+):", line).group(1)) for line in skips]
    assert len(set(batches)) == 4  # one after another: training moved on after each skip
    assert re.search(r"error: 4 batches had a NaN or infinite loss, more than training.max_nonfinite_batches=3: "
                     r"training is diverging or the data is broken\. Lower optim\.lr \(now [0-9.e+]+\) or check the "
                     r"utterances of the last one: ", proc.stderr), proc.stderr


def test_audio_that_turned_nan_after_stage0_names_the_utterance(tiny_recipe, tmp_path):
    samples = real_samples().astype(np.float32) / 32768
    samples[5000:5100] = np.nan
    nan_wav = tmp_path / "nan.wav"
    sf.write(nan_wav, samples, 16000, subtype="FLOAT")
    manifest = with_extra_utterance(tiny_recipe, "train_nan", "NAN0001", nan_wav, len(samples) / 16000)
    proc = train(tiny_recipe, write_train_config(tiny_recipe, "nan_audio", data_train=manifest), "exp/nan_audio")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: training utterance NAN0001: {nan_wav} has NaN or infinite samples" in proc.stderr


def test_a_transcript_too_long_for_its_audio_is_filtered_counting_repeats(tiny_recipe, tmp_path):
    """CTC needs a blank between equal tokens; Paddle's CTC loss is 0 (not inf) when that cannot fit."""
    short = tmp_path / "short.wav"
    sf.write(short, real_samples()[:16000], 16000, subtype="PCM_16")  # 1 s: 12 encoder frames at x8
    manifest = with_extra_utterance(tiny_recipe, "train_repeats", "REPEAT0001", short, 1.0, text="好" * 8)
    proc = train(tiny_recipe, write_train_config(tiny_recipe, "repeats", data_train=manifest), "exp/repeats")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"filtered REPEAT0001: 8 tokens \(7 repeated, each needing a blank between\) but only 1\d encoder "
                     r"frames \(CTC cannot align\)", proc.stdout), proc.stdout[-2000:]


def test_an_utterance_longer_than_the_model_can_take_is_filtered_and_reported(tiny_recipe, tmp_path):
    """The Conformer's positional encoding holds 5000 encoder frames: 400 s at x8 subsampling."""
    long_wav = tmp_path / "long.wav"
    x = real_samples()
    repeats = int(np.ceil(420 * 16000 / len(x)))
    sf.write(long_wav, np.tile(x, repeats)[: 420 * 16000], 16000, subtype="PCM_16")
    manifest = with_extra_utterance(tiny_recipe, "train_long", "LONG0001", long_wav, 420.0)
    proc = train(tiny_recipe, write_train_config(tiny_recipe, "too_long", data_train=manifest, max_duration=1000),
                 "exp/too_long")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"filtered LONG0001: 52\d\d encoder frames, more than the 5000 the model's positional encoding "
                     r"holds \(lower max_duration_s\)", proc.stdout), proc.stdout[-3000:]
    assert re.search(r"stage 1: train: \d+ utterances, 1 filtered", proc.stdout)


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(tiny_recipe):
    config = write_train_config(tiny_recipe, "sigterm", max_epoch=3)
    proc = subprocess.Popen(train_cmd(config, "exp/sigterm"), cwd=tiny_recipe, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if re.search(r"epoch 1 step 2 loss", line):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=300)
    out.append(rest)
    assert proc.returncode == 143, err
    match = re.search(r"stage 1: stopped by SIGTERM after update (\d+); checkpoint step_(\d+) holds the full state: "
                      r"run stage 1 again to resume", err)
    assert match and match.group(1) == match.group(2) and int(match.group(1)) >= 2, err
    assert "Traceback" not in err
    ckpt = tiny_recipe / "exp/sigterm/checkpoints"
    record = json.loads((ckpt / f"step_{match.group(1)}.json").read_text())
    assert record["step"] == int(match.group(1)) and not record["epoch_done"]
    assert not list(ckpt.glob(".*.tmp"))

    resumed = train(tiny_recipe, config, "exp/sigterm")
    assert resumed.returncode == 0 and f"resumed from step_{match.group(1)}" in resumed.stdout
    straight = train(tiny_recipe, config, "exp/sigterm_reference")
    assert straight.returncode == 0
    a = paddle.load(str(ckpt / "3.pdparams"))
    b = paddle.load(str(tiny_recipe / "exp/sigterm_reference/checkpoints/3.pdparams"))
    for name in b:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)


CHECK_CHECKPOINTS = """
import json, sys
from pathlib import Path
import paddle
ckpt = Path(sys.argv[1])
names = sorted(p.name for p in ckpt.iterdir())
state = {n: len(paddle.load(str(ckpt / n))) for n in names if n.endswith((".pdparams", ".pdopt"))}
print(json.dumps({"files": names, "loaded": state}))
"""


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tiny_recipe, tmp_path):
    """Checkpoints go to a tmpfs with room for one epoch's checkpoint and a half: writing the second
    fails with ENOSPC. The first must stay valid, and training must resume from it."""
    from paddle_asr.train.trainer import prepare_run

    config = write_train_config(tiny_recipe, "disk_full", max_epoch=2)
    sizing = train(tiny_recipe, write_train_config(tiny_recipe, "disk_full_sizing"), "exp/disk_full_sizing")
    assert sizing.returncode == 0
    one = sum(p.stat().st_size for p in (tiny_recipe / "exp/disk_full_sizing/checkpoints").glob("1.*"))
    exp = tiny_recipe / "exp/disk_full"
    assert prepare_run(load_config(tiny_recipe / config), tiny_recipe, exp, log=lambda *_: None)
    (exp / "checkpoints").mkdir()
    (tmp_path / "check.py").write_text(CHECK_CHECKPOINTS)
    saved = tmp_path / "saved"
    script = (f'mount -t tmpfs -o size={int(one * 1.5) // 1024 + 1}k tmpfs "$1/checkpoints" || exit 90\n'
              f'"{sys.executable}" -m paddle_asr.cli train --config "$2" --exp_dir "$1"; echo "train exit $?"\n'
              f'"{sys.executable}" "$3" "$1/checkpoints"\n'
              f'cp -a "$1/checkpoints/." "$4"\n')
    # A private mount namespace (and user namespace, so this needs no root): the tmpfs vanishes with it.
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", str(exp), config,
                           str(tmp_path / "check.py"), str(saved)], cwd=tiny_recipe, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "train exit 1" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    expected = (r"error: cannot write checkpoint 2 in .*exp/disk_full/checkpoints \(No space left on device\); "
                r"the previous checkpoint 1 is intact: free space there and run stage 1 again to resume")
    assert re.search(expected, proc.stderr), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    listing = json.loads(proc.stdout.splitlines()[-1])
    assert listing["files"] == ["1.json", "1.pdopt", "1.pdparams"]  # no part of checkpoint 2, no temporary file
    assert listing["loaded"]["1.pdparams"] > 0 and listing["loaded"]["1.pdopt"] > 0

    # Space freed (the files back on a normal disk): stage 1 resumes from checkpoint 1 and finishes.
    shutil.rmtree(exp / "checkpoints")
    shutil.copytree(saved, exp / "checkpoints")
    resumed = train(tiny_recipe, config, "exp/disk_full")
    assert resumed.returncode == 0 and "resumed from 1 at epoch 2" in resumed.stdout, resumed.stderr[-2000:]
    assert (exp / "checkpoints/2.pdparams").is_file()


# ---------------------------------------------------------------------------------- configuration
def test_a_config_path_that_does_not_exist_names_the_key(tiny_recipe):
    config = write_train_config(tiny_recipe, "missing_path", data_train="data/nowhere/data.list")
    proc = train(tiny_recipe, config, "exp/missing_path")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"error: data.train: {tiny_recipe / 'data/nowhere/data.list'} does not exist; run stage 0 (data "
            "preparation) first, or correct data.train in the config") in proc.stderr
    assert not (tiny_recipe / "exp/missing_path").exists()


def test_a_checkpoint_that_does_not_fit_lists_names_and_shapes(tiny_recipe, tmp_path):
    from paddle_asr.models.registry import build_model, load_weights
    from paddle_asr.train.trainer import resolve_config

    config = resolve_config(load_config(tiny_recipe / write_train_config(tiny_recipe, "fit")), tiny_recipe)
    model = build_model(config)
    state = model.state_dict()
    state.pop("decoder.embed.0.weight")
    state["encoder.extra.weight"] = paddle.zeros([2])
    state["ctc.ctc_lo.weight"] = paddle.zeros([32, 7])
    paddle.save(state, str(tmp_path / "other.pdparams"))
    with pytest.raises(AsrError) as err:
        load_weights(model, tmp_path / "other.pdparams")
    message = str(err.value)
    assert f"checkpoint {tmp_path / 'other.pdparams'} does not fit the model built from the config" in message
    assert "missing in checkpoint: decoder.embed.0.weight" in message
    assert "not in model: encoder.extra.weight" in message
    assert re.search(r"shape mismatch ctc.ctc_lo.weight: checkpoint \[32, 7\] vs model \[32, \d+\]", message)


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(f"training: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(AsrError, match=r"evil.yaml"):
        load_config(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ safety
def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            base = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            out.append((f"{base}.{name}" if base else name, node))
    return out


def test_no_command_runs_through_a_shell_and_no_code_is_evaluated():
    offenders = []
    for path in sorted((REPO / "paddle_asr").rglob("*.py")):
        for name, call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            if name in ("os.system", "os.popen", "eval", "exec", "yaml.load", "pickle.loads", "subprocess.getoutput",
                        "subprocess.getstatusoutput"):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {name}")
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {name}(shell=...)")
    assert offenders == []


def test_file_names_with_shell_characters_are_only_file_names(tmp_path):
    """A transcript, a wav.scp path and an output name full of shell syntax change nothing else."""
    marker = tmp_path / "pwned"  # what any of the commands in the name would create, run from tmp_path
    odd = tmp_path / "a $(touch pwned); touch pwned `touch pwned` | touch pwned.wav"
    odd.write_bytes(wav_bytes(real_samples()))
    from paddle_asr.data.audio_inputs import collect_inputs

    inputs, problems = collect_inputs([str(odd)])
    assert [Path(i.path) for i in inputs] == [odd] and not problems
    for command in (["dashboard", "--logdir", odd.name], ["score", "--ref", odd.name, "--hyp", odd.name],
                    ["make-long-recording", "--data", odd.name, "--out", odd.name + ".out.wav"]):
        proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", *command], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert odd.name in proc.stderr + proc.stdout, (command, proc.stderr)  # taken as a name, in messages too
    assert not marker.exists()


def test_servers_bind_the_loopback_unless_asked():
    from paddle_asr.cli import build_parser
    from paddle_asr.dashboard import DEFAULT_HOST, dashboard_command

    assert DEFAULT_HOST == "127.0.0.1"
    args = build_parser().parse_args(["dashboard"])
    assert args.host == "127.0.0.1"
    assert dashboard_command(Path("exp"), "127.0.0.1", 8040)[-4:] == ["--host", "127.0.0.1", "--port", "8040"]
    script = (REPO / "docker/visualdl.sh").read_text()
    assert "\nhost=127.0.0.1\n" in script


def test_model_files_come_only_from_paths_the_user_gives(tmp_path):
    """No code fetches weights by name: the only URL is the LibriSpeech mirror of the download stage,
    and a model named like a hub model is just a missing folder."""
    urls = []
    for path in sorted((REPO / "paddle_asr").rglob("*.py")):
        for match in re.finditer(r"https?://[^\s\"')]+", path.read_text(encoding="utf-8")):
            urls.append((path.relative_to(REPO).as_posix(), match.group(0)))
    allowed = {("paddle_asr/cli.py", "https://www.openslr.org/resources/12/"),  # get-librispeech's mirror
               ("paddle_asr/data/corpora/librispeech.py", "https://www.openslr.org/resources/12/"),
               ("paddle_asr/dashboard.py", "http://{shown}:{port}/app/scalar"),  # the dashboard's own address
               ("paddle_asr/serve/app.py", "http://{o.host}:{o.port}:"),  # the ASR server's own address
               ("paddle_asr/serve/paddlespeech_client.py", "http://{self.host}:{self.port}")}  # its client
    assert urls and set(urls) <= allowed, urls
    for command in (["transcribe", "--bundle", "conformer_wenetspeech-zh-16k", str(REAL_WAV)],
                    ["import-paddlespeech", "asr1_conformer_aishell_ckpt_0.1.1.model", "--exp_dir", "exp/x"]):
        proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", *command], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert re.search(r"(is not a directory|is not an exported model)", proc.stderr,
                         re.I), proc.stderr
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------- stage 0 on a corrupted corpus
FAULTS = {
    # fault: (how the file is spoiled, the reason stage 0 must give)
    "header cut": (lambda p: p.write_bytes(p.read_bytes()[:30]), r"unreadable audio: .* is not a readable audio file"),
    "samples cut": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3]),
                    r"unreadable audio: .* is truncated: its header declares \d+ bytes of samples, the file holds \d+"),
    "zero bytes": (lambda p: p.write_bytes(b""), r"unreadable audio: .* is an empty file \(0 bytes\)"),
    "not audio": (lambda p: p.write_bytes(os.urandom(5000)), r"unreadable audio: .* is not a readable audio file"),
    "8 kHz": (lambda p: sf.write(p, sf.read(p, dtype="int16")[0][::2], 8000, subtype="PCM_16"),
              r"sample rate 8000 Hz, expected 16000 Hz"),
    "stereo": (lambda p: sf.write(p, np.stack([sf.read(p, dtype="int16")[0]] * 2, axis=1), 16000, subtype="PCM_16"),
               r"2 channels, expected mono"),
    "NaN samples": (lambda p: sf.write(p, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT"),
                    r"unreadable audio: .* has NaN or infinite samples"),
    "directory": (lambda p: (p.unlink(), p.mkdir()), r"unreadable audio: .* is a directory, not an audio file"),
}


def test_stage0_on_the_demo_corpus_with_5_percent_of_its_files_corrupted(tmp_path):
    """The embedded demo corpus, 5 % of its wav files spoiled in eight ways (after unpacking): stage 0
    finishes, names every bad file with its reason, and the manifests hold exactly the good ones."""
    from paddle_asr.data.corpora.demo import generate_demo_corpus

    demo = generate_demo_corpus(tmp_path / "corpus", log=lambda *_: None)
    root = tmp_path / "corpus" / "data_aishell"
    aishell.extract_speaker_archives(root, log=lambda *_: None)
    wavs = sorted((root / "wav").glob("*/*/*.wav"))
    untranscribed = set(demo["untranscribed_ids"])
    # A wav without a transcript line is left out for that reason first, so the faults go to the others.
    spoilable = [w for w in wavs if w.stem not in untranscribed]
    rng = np.random.default_rng(9)
    chosen = sorted(rng.choice(len(spoilable), size=round(0.05 * len(wavs)), replace=False))
    spoiled: dict[str, tuple[str, str]] = {}
    for n, i in enumerate(chosen):
        fault = list(FAULTS)[n % len(FAULTS)]
        FAULTS[fault][0](spoilable[i])
        spoiled[spoilable[i].stem] = (spoilable[i].parts[-3], fault)

    summary, logs = prepare(tmp_path / "corpus", tmp_path / "data")
    for split in ("train", "dev", "test"):
        reasons = dropped(tmp_path / "data", split)
        bad = {k for k, (s, _) in spoiled.items() if s == split}
        no_line = {w.stem for w in wavs if w.parts[-3] == split and w.stem in untranscribed} - bad
        assert set(reasons) == bad | no_line, split
        for key in bad:
            assert re.fullmatch(FAULTS[spoiled[key][1]][1] + r"( \(.*\))?", reasons[key]), (key, reasons[key])
        for key in no_line:
            assert reasons[key] == "no transcript line"
        good = {w.stem for w in wavs if w.parts[-3] == split} - bad - no_line
        assert {u.key for u in read_manifest(tmp_path / "data" / split / "data.list")} == good
        text_keys = {line.split(" ", 1)[0] for line in (tmp_path / "data" / split / "text").read_text().splitlines()}
        assert text_keys == good
        assert summary["splits"][split]["dropped"] == len(bad | no_line)
    assert len(spoiled) >= 0.05 * len(wavs) - 1 and len({f for _, f in spoiled.values()}) == len(FAULTS)
    print(f"\n{len(wavs)} wav files, {len(spoiled)} spoiled ({', '.join(sorted(FAULTS))}); stage 0 kept "
          f"{sum(s['kept'] for s in summary['splits'].values())}, left out "
          f"{sum(s['dropped'] for s in summary['splits'].values())} (with {len(untranscribed)} untranscribed)")


def test_stage_3_names_a_test_set_stage_0_never_prepared(tmp_path, capsys):
    from paddle_asr.cli import main as cli_main
    from paddle_asr.import_paddlespeech import import_paddlespeech
    from tests.conftest import REPO

    exp = import_paddlespeech(REPO / "tests/fixtures/paddlespeech/conformer", tmp_path / "exp", log=lambda *_: None)
    (tmp_path / "decode.yaml").write_text("methods: [ctc_greedy_search]\n")
    missing = tmp_path / "data/dev_other/data.list"
    args = ["test", "--exp_dir", str(exp), "--data", str(missing), "--decode_config", str(tmp_path / "decode.yaml")]
    assert cli_main(args) != 0
    err = capsys.readouterr().err
    assert f"test set dev_other has no manifest {missing}" in err and "run stage 0 for it" in err
    assert "Traceback" not in err
    assert not list(exp.glob("test_*"))


def test_stage_3_decodes_several_test_sets_in_one_run_each_into_its_own_results(tmp_path, tiny_recipe, capsys):
    """`paddle-asr test --data A B` (how run_stages.sh calls stages 3, 5 and 6): each set's results go to
    the prefix with its own name for {test_set}; several sets with a prefix that has no {test_set},
    or two sets of one name, are refused before any decoding, naming the way out."""
    from paddle_asr.cli import main as cli_main
    from paddle_asr.data.manifest import read_manifest
    from paddle_asr.import_paddlespeech import import_paddlespeech
    from tests.conftest import REPO

    exp = import_paddlespeech(REPO / "tests/fixtures/paddlespeech/conformer", tmp_path / "exp", log=lambda *_: None)
    (tmp_path / "decode.yaml").write_text("methods: [ctc_greedy_search]\n")
    sets = [tiny_recipe / "data/dev/data.list", tiny_recipe / "data/test/data.list"]
    base = ["test", "--exp_dir", str(exp), "--decode_config", str(tmp_path / "decode.yaml"), "--data"]
    assert cli_main([*base, *map(str, sets), "--out_prefix", str(tmp_path / "out/all")]) != 0
    assert "put {test_set} in it where each set's name goes" in capsys.readouterr().err
    twin = tmp_path / "other/dev/data.list"
    twin.parent.mkdir(parents=True)
    twin.write_text(sets[0].read_text())
    assert cli_main([*base, str(sets[0]), str(twin), "--out_prefix", str(tmp_path / "out/{test_set}")]) != 0
    assert "two share a name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert cli_main([*base, *map(str, sets), "--out_prefix", str(tmp_path / "out/{test_set}")]) == 0
    for manifest in sets:
        result = json.loads((tmp_path / f"out/{manifest.parent.name}_ctc_greedy_search/result.json").read_text())
        assert result["test_set"] == manifest.parent.name
        assert result["utterances"] == len(read_manifest(manifest))
