"""LibriSpeech: stage 0 on a LibriSpeech-layout folder, BPE units, archives and downloads.

The folder is built from the real LibriSpeech fixture (cut into utterances, written as FLAC) with
the real layout: <subset>/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>-<UTT>.flac + .trans.txt.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from paddle_asr.config import DataConfig, FeatureConfig
from paddle_asr.data.corpora import librispeech
from paddle_asr.data.download import download_archive
from paddle_asr.data.manifest import read_manifest
from paddle_asr.data.prepare import prepare_cmvn, prepare_data
from paddle_asr.data.tokenizer import BLANK, BPE_MODEL, EOS, UNK, BpeTokenizer, build_bpe_units, load_tokenizer
from paddle_asr.errors import AsrError
from paddle_asr.lm.build import build_lm
from tests.conftest import real_fixture

REAL_WAV = real_fixture("librispeech-1995-1837-0001.wav")
REAL_BPE = real_fixture("librispeech.train_960_unigram5000.bpemodel")
REAL_TEXT = ("IT WAS THE FIRST GREAT SORROW OF HIS LIFE IT WAS NOT SO MUCH THE LOSS OF THE COTTON ITSELF "
             "BUT THE FANTASY THE HOPES THE DREAMS BUILT AROUND IT")
SENTENCES = ["THE COTTON WAS LOST", "HIS LIFE WAS NOT SO GREAT", "IT WAS THE FIRST SORROW", "THE HOPES OF HIS DREAMS",
             "BUT THE FANTASY WAS BUILT", "AROUND IT THE LOSS", "IT'S THE COTTON ITSELF", "NOT SO MUCH THE HOPES"]


def _write_flac(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, format="FLAC", subtype="PCM_16")


def make_librispeech(root: Path) -> dict:
    """A LibriSpeech folder: two subsets, speakers with one or two chapters, and some faults.

    Returns {key: (subset, text, seconds)} of the utterances stage 0 must keep, and the dropped ids.
    """
    audio, rate = sf.read(REAL_WAV, dtype="int16")
    assert rate == 16000
    layout = {"train-clean-100": [(103, 1240, 3), (103, 1241, 2), (1069, 133699, 3)], "dev-clean": [(84, 121123, 2)]}
    expected, k = {}, 0
    for subset, chapters in layout.items():
        for spk, chap, n in chapters:
            folder = root / "LibriSpeech" / subset / str(spk) / str(chap)
            lines = []
            for u in range(n):
                key = f"{spk}-{chap}-{u:04d}"
                text = SENTENCES[k % len(SENTENCES)]
                seconds = 1.0 + 0.25 * k
                # Distinct slices of real speech: each utterance has its own length.
                start = (k * 4000) % (len(audio) - 80000)
                _write_flac(folder / f"{key}.flac", audio[start:start + int(seconds * rate)])
                lines.append(f"{key} {text}")
                expected[key] = (subset, text, seconds)
                k += 1
            (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    train_chapter = root / "LibriSpeech" / "train-clean-100" / "103" / "1240"
    # Faults, each reported by id: audio without a line, a line without audio, stereo, 8 kHz.
    _write_flac(train_chapter / "103-1240-0007.flac", audio[:16000])
    with open(train_chapter / "103-1240.trans.txt", "a", encoding="utf-8") as f:
        f.write("103-1240-0008 A LINE WITHOUT AUDIO\n103-1240-0009 STEREO AUDIO\n103-1240-0010 EIGHT KILOHERTZ\n")
    _write_flac(train_chapter / "103-1240-0009.flac", np.stack([audio[:16000]] * 2, axis=1))
    _write_flac(train_chapter / "103-1240-0010.flac", audio[:8000], rate=8000)
    dropped = {"103-1240-0007": "no transcript line", "103-1240-0008": "without audio",
               "103-1240-0009": "2 channels", "103-1240-0010": "sample rate 8000"}
    return {"kept": expected, "dropped": dropped}


def test_real_bpe_model_round_trips_the_real_transcript(tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(REAL_BPE))
    assert sp.get_piece_size() == 5000
    assert sp.decode(sp.encode(REAL_TEXT)) == REAL_TEXT
    # Through our units: the pieces seen in the text, in PaddleSpeech's vocab layout.
    (tmp_path / BPE_MODEL).write_bytes(REAL_BPE.read_bytes())
    units = build_bpe_units([REAL_TEXT], tmp_path / BPE_MODEL)
    assert units[:2] == [BLANK, UNK] and units[-1] == EOS and units[2:-1] == sorted(units[2:-1])
    assert set(units[2:-1]) == set(sp.encode(REAL_TEXT, out_type=str))
    (tmp_path / "vocab.txt").write_text("".join(u + "\n" for u in units), encoding="utf-8")
    tok = load_tokenizer(tmp_path / "vocab.txt", "bpe")
    assert isinstance(tok, BpeTokenizer)
    ids, unknown = tok.encode(REAL_TEXT)
    assert unknown == 0 and len(ids) == len(sp.encode(REAL_TEXT))
    assert tok.decode(ids) == REAL_TEXT
    # Blanks and <eos> inside the id stream are not text.
    assert tok.decode([0] + ids + [len(units) - 1]) == REAL_TEXT
    # A word outside the pieces seen is <unk>, counted.
    assert tok.encode("ZYZZYVA")[1] > 0
    with pytest.raises(AsrError, match="data.units: char"):
        load_tokenizer(tmp_path / "vocab.txt", "char")


def test_stage0_on_a_librispeech_layout_folder(tmp_path):
    truth = make_librispeech(tmp_path / "corpus")
    conf = DataConfig(train="data/train_clean_100/data.list", cmvn="data/train_clean_100/global_cmvn", units="bpe",
                      bpe_size=30)
    sets = {"train_clean_100": ["train-clean-100"], "dev": ["dev-clean"], "dev_clean": ["dev-clean"]}
    logs: list[str] = []
    summary = prepare_data("librispeech", tmp_path / "corpus", tmp_path / "data", FeatureConfig(), conf, sets=sets,
                           nj=1, log=logs.append)
    assert summary["train_set"] == "train_clean_100" and summary["unit_type"] == "bpe"
    for name, subset in (("train_clean_100", "train-clean-100"), ("dev", "dev-clean"), ("dev_clean", "dev-clean")):
        utts = {u.key: u for u in read_manifest(tmp_path / "data" / name / "data.list")}
        want = {k: v for k, v in truth["kept"].items() if v[0] == subset}
        assert set(utts) == set(want), name
        for key, (_, text, seconds) in want.items():
            assert utts[key].text == text
            assert utts[key].duration == pytest.approx(seconds, abs=1e-3)
            assert Path(utts[key].wav).name == f"{key}.flac" and Path(utts[key].wav).is_file()
        wav_scp = (tmp_path / "data" / name / "wav.scp").read_text().splitlines()
        assert [line.split()[0] for line in wav_scp] == sorted(want)
    # Every fault is reported by id with its reason; nothing else is dropped.
    dropped = dict(line.split("\t", 1) for line in
                   (tmp_path / "data" / "train_clean_100" / "dropped.txt").read_text().splitlines())
    assert set(dropped) == set(truth["dropped"])
    for key, reason in truth["dropped"].items():
        assert reason in dropped[key]
        assert any(key in line for line in logs)
    # Units: the pieces of a 30-piece model trained on the training text only.
    units = (tmp_path / "data" / "lang_char" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert units[:2] == [BLANK, UNK] and units[-1] == EOS and units[2:-1] == sorted(units[2:-1])
    tok = load_tokenizer(tmp_path / "data" / "lang_char" / "vocab.txt", "bpe")
    for _, text, _ in truth["kept"].values():
        ids, unknown = tok.encode(text)
        assert unknown == 0 and tok.decode(ids) == text
    # CMVN of the training set, where the config says.
    prepare_cmvn(tmp_path / "data", FeatureConfig(), tmp_path / "data/train_clean_100/global_cmvn", nj=1,
                 log=logs.append, train_set="train_clean_100")
    cmvn = json.loads((tmp_path / "data/train_clean_100/global_cmvn").read_text())
    assert cmvn["frame_num"] == sum(int(round(s * 100)) - 2 for _, (sub, _, s) in truth["kept"].items()
                                    if sub == "train-clean-100")
    # The n-gram LM of BPE units is over pieces.
    report = build_lm(tmp_path / "data/train_clean_100/data.list", tmp_path / "lm.arpa", order=3,
                      units=tmp_path / "data/lang_char/vocab.txt", log=logs.append)
    lm_text = (tmp_path / "lm.txt").read_text(encoding="utf-8").splitlines()
    assert lm_text[0].split() == tok.pieces(truth["kept"]["103-1240-0000"][1])
    assert report["vocabulary"] >= len(units) - 3


def test_stage0_with_the_real_bpe_model_and_archives(tmp_path):
    corpus = tmp_path / "corpus"
    truth = make_librispeech(tmp_path / "unpacked")
    # Archives as OpenSLR ships them: LibriSpeech/<subset>/... inside <subset>.tar.gz.
    corpus.mkdir()
    for subset in ("train-clean-100", "dev-clean"):
        with tarfile.open(corpus / f"{subset}.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "unpacked" / "LibriSpeech" / subset, arcname=f"LibriSpeech/{subset}")
    conf = DataConfig(train="data/train/data.list", units="bpe", bpe_model=str(REAL_BPE))
    logs: list[str] = []
    prepare_data("librispeech", corpus, tmp_path / "data", FeatureConfig(), conf,
                 sets={"train": ["train-clean-100"], "dev": ["dev-clean"]}, nj=1, log=logs.append)
    assert (corpus / "train-clean-100.tar.gz.extracted").is_file()
    assert (tmp_path / "data/lang_char" / BPE_MODEL).read_bytes() == REAL_BPE.read_bytes()
    tok = load_tokenizer(tmp_path / "data/lang_char/vocab.txt", "bpe")
    train_texts = [v[1] for v in truth["kept"].values() if v[0] == "train-clean-100"]
    assert len(tok.units) - 3 == len({p for t in train_texts for p in tok.pieces(t)})
    assert all(tok.decode(tok.encode(t)[0]) == t for t in train_texts)
    # A set that names a subset the corpus does not hold is an error that says what to do.
    with pytest.raises(AsrError, match="test-clean is not in"):
        prepare_data("librispeech", corpus, tmp_path / "data2", FeatureConfig(), conf,
                     sets={"train": ["train-clean-100"], "test_clean": ["test-clean"]}, nj=1, log=logs.append)
    # The config's training set must be one of the sets.
    with pytest.raises(AsrError, match="data/train_960"):
        prepare_data("librispeech", corpus, tmp_path / "data3", FeatureConfig(),
                     DataConfig(train="data/train_960/data.list"), sets={"train": ["train-clean-100"]}, nj=1,
                     log=logs.append)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (Python's own handler ignores Range)."""

    def do_GET(self):  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_resumes_checks_md5_and_unpacks(tmp_path, http_server):
    served, url = http_server
    make_librispeech(tmp_path / "made")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "made" / "LibriSpeech" / "dev-clean", arcname="LibriSpeech/dev-clean")
    archive = buf.getvalue()
    (served / "dev-clean.tar.gz").write_bytes(archive)
    md5 = {"dev-clean": hashlib.md5(archive).hexdigest()}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # An interrupted earlier download: the first half is there as .part.
    (corpus / "dev-clean.tar.gz.part").write_bytes(archive[: len(archive) // 2])
    logs: list[str] = []
    root = librispeech.fetch_subsets(corpus, ["dev-clean"], base_url=url, md5=md5, log=logs.append)
    assert any("resuming at" in line for line in logs)
    assert (corpus / "dev-clean.tar.gz").read_bytes() == archive
    assert not (corpus / "dev-clean.tar.gz.part").exists()
    assert sorted(p.name for p in (root / "dev-clean" / "84" / "121123").glob("*.flac")) == \
        ["84-121123-0000.flac", "84-121123-0001.flac"]
    # Unpacked subsets are not fetched again.
    logs.clear()
    librispeech.fetch_subsets(corpus, ["dev-clean"], base_url="http://127.0.0.1:9/", md5=md5, log=logs.append)
    assert any("already unpacked" in line for line in logs)

    # A corrupt download is removed and reported with both sums.
    with pytest.raises(AsrError, match="md5 .* expected 0{32}"):
        download_archive(url + "dev-clean.tar.gz", tmp_path / "x" / "dev-clean.tar.gz", "0" * 32, log=logs.append)
    assert not any((tmp_path / "x").iterdir())
    # No network (nothing listens on port 9): a clear error naming the URL and what to do.
    with pytest.raises(AsrError, match="cannot download http://127.0.0.1:9/test-clean.tar.gz .*fetch it yourself"):
        librispeech.fetch_subsets(tmp_path / "y", ["test-clean"], base_url="http://127.0.0.1:9/", log=logs.append)


def test_unsafe_archive_is_refused(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with tarfile.open(corpus / "dev-clean.tar.gz", "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(AsrError, match="corrupt, truncated or unsafe"):
        librispeech.locate(corpus, log=lambda *_: None)
    assert not (tmp_path / "outside.txt").exists()
    assert not (corpus / "dev-clean.tar.gz.extracted").exists()


def test_word_times_join_bpe_pieces(tmp_path):
    from paddle_asr.transcribe import word_times

    (tmp_path / BPE_MODEL).write_bytes(REAL_BPE.read_bytes())
    text = REAL_TEXT + " ZYZZYVA'S"
    units = build_bpe_units([text], tmp_path / BPE_MODEL)
    (tmp_path / "vocab.txt").write_text("".join(u + "\n" for u in units), encoding="utf-8")
    tok = load_tokenizer(tmp_path / "vocab.txt", "bpe")
    ids, _ = tok.encode(text)
    # One 0.1 s slot per piece that has text, as the aligner would give.
    shown = [i for i in ids if tok.decode([i])]
    tokens = [{"token": tok.decode([i]), "start": k / 10, "end": k / 10 + 0.05} for k, i in enumerate(shown)]
    words = word_times(tok, ids, tokens)
    assert [w["word"] for w in words] == text.split()
    assert all(w["start"] < w["end"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))
    # A word of several pieces spans from its first piece's start to its last piece's end.
    pieces_of_last = len(tok.pieces("ZYZZYVA'S"))
    assert pieces_of_last > 1
    assert words[-1]["start"] == tokens[-pieces_of_last]["start"] or tok.pieces("ZYZZYVA'S")[0] == "\u2581"
    assert words[-1]["end"] == tokens[-1]["end"]


def test_a_folder_beside_the_standard_subsets_is_one_more_subset(tmp_path):
    """The English demo's test-unseen-voices: read like any subset; a name with no folder is refused."""
    truth = make_librispeech(tmp_path / "corpus")
    root = tmp_path / "corpus" / "LibriSpeech"
    shutil.copytree(root / "dev-clean", root / "test-unseen-voices")
    logs: list[str] = []
    assert librispeech.locate(tmp_path / "corpus", log=logs.append) == root
    assert logs[-1].endswith("has dev-clean, train-clean-100, test-unseen-voices")
    splits = librispeech.read_splits(root, 16000, {"test_unseen_voices": ["test-unseen-voices"]})
    kept, dropped = splits["test_unseen_voices"]
    assert {u.key: u.text for u in kept} == {k: v[1] for k, v in truth["kept"].items() if v[0] == "dev-clean"}
    assert not dropped and all(Path(u.wav).parts[-4] == "test-unseen-voices" for u in kept)
    with pytest.raises(AsrError, match=f"test-unseen-voice: neither one of .* nor a folder of {root}"):
        librispeech.read_splits(root, 16000, {"test_unseen_voices": ["test-unseen-voice"]})
