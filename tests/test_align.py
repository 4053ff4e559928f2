"""`paddle-asr align` on real recordings: the README example, the three output formats, the words of
Mandarin and English texts, overlapping windows, and every utterance that cannot be aligned named
with its reason while the others are written.

The bundles here are small U2 models with random weights (tests/test_export_quant.py), whose units
hold the fixtures' characters or sentencepiece pieces: where their CTC spikes fall means nothing, so
these tests check what alignment guarantees whatever the model (each token in order, inside the
recording, ends from speech or the next token) and the files. How well a trained model finds
utterance boundaries is measured by stage 7 on the demo (docs/align.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from paddle_asr.align import (
    Aligner,
    AlignOptions,
    encoder_windows,
    frames_needed,
    stitch_windows,
    token_intervals,
    transcript_words,
)
from paddle_asr.data.audio import read_audio
from paddle_asr.data.long_recording import compare_alignment_with_parts, speech_bounds
from paddle_asr.data.tokenizer import BPE_MODEL, BpeTokenizer, CharTokenizer, build_bpe_units
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import write_bundle_files
from paddle_asr.export.export import export_model
from tests.conftest import REPO, real_fixture
from tests.test_export_quant import FEAT_DIM, build_small_u2

AISHELL = real_fixture("aishell-BAC009S0724W0121.wav")
AISHELL_TEXT = "广州市房地产中介协会分析"
LIBRI = real_fixture("librispeech-1995-1837-0001.wav")
LIBRI_TEXT = ("IT WAS THE FIRST GREAT SORROW OF HIS LIFE IT WAS NOT SO MUCH THE LOSS OF THE COTTON ITSELF "
              "BUT THE FANTASY THE HOPES THE DREAMS BUILT AROUND IT")
VOCAB_SIZE = 60  # build_small_u2's


def export_bundle(out: Path, units: list[str], bpe_model: Path | None = None) -> Path:
    """A small random U2 exported to `out` with `units` (VOCAB_SIZE of them) as its vocabulary."""
    config, model = build_small_u2()
    assert len(units) == VOCAB_SIZE == config.vocab_size
    diffs = export_model(model, FEAT_DIM, out)
    vocab = out.parent / "lang" / "vocab.txt"
    vocab.parent.mkdir(parents=True)
    vocab.write_text("".join(f"{u}\n" for u in units), encoding="utf-8")
    if bpe_model is not None:
        config.data.units = "bpe"
        (vocab.parent / BPE_MODEL).write_bytes(bpe_model.read_bytes())
    write_bundle_files(out, config, vocab, model, checkpoint="test", functions=sorted(diffs))
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """Characters: the AISHELL fixture's, then fillers."""
    chars = sorted(set(AISHELL_TEXT))
    fillers = [chr(0x4E00 + i) for i in range(200) if chr(0x4E00 + i) not in chars]
    return export_bundle(tmp_path_factory.mktemp("char") / "fp32",
                         ["<blank>", "<unk>", *chars, *fillers[: VOCAB_SIZE - 3 - len(chars)], "<eos>"])


@pytest.fixture(scope="module")
def bpe_bundle(tmp_path_factory) -> Path:
    """Sentencepiece pieces of the LibriSpeech fixture's transcript (WeNet's 5,000-unit model), then fillers."""
    model = real_fixture("librispeech.train_960_unigram5000.bpemodel")
    pieces = build_bpe_units([LIBRI_TEXT], model)[2:-1]
    fillers = [f"\u2581FILLER{i}" for i in range(VOCAB_SIZE - 3 - len(pieces))]
    return export_bundle(tmp_path_factory.mktemp("bpe") / "fp32", ["<blank>", "<unk>", *pieces, *fillers, "<eos>"],
                         bpe_model=model)


def paddle_asr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paddle_asr.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def check_times(result: dict, duration: float) -> None:
    """Tokens in order, each inside the recording with a positive length, none overlapping the next;
    each word from its first token's start to its last token's end."""
    tokens = result["tokens"]
    assert all(0 <= t["start"] < t["end"] <= duration for t in tokens)
    assert all(a["end"] <= b["start"] for a, b in zip(tokens, tokens[1:]))
    assert all(0 <= t["conf"] <= 1 for t in tokens + result["words"])


# ----------------------------------------------------------------------------------- the README
def test_the_readme_example_runs_on_a_real_recording(bundle, tmp_path):
    """README.md's align commands, run as printed on the AISHELL fixture: a CTM of its 12 characters
    and a TextGrid that the `textgrid` package (what PaddleSpeech and WeNet write theirs with) reads."""
    import textgrid

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Aligning transcripts", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("paddle-asr align")]
    assert len(commands) == 2
    (tmp_path / "text").write_text(f"BAC009S0724W0121 {AISHELL_TEXT}\n", encoding="utf-8")
    (tmp_path / "wav.scp").write_text(f"BAC009S0724W0121 {AISHELL}\n", encoding="utf-8")
    for command in commands:
        command = command.replace("recipes/demo/exp/conformer/export/int8", str(bundle))
        proc = subprocess.run(command.replace("paddle-asr", f"{sys.executable} -m paddle_asr.cli", 1), shell=True,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "aligned 1 of 1 recordings" in proc.stderr
    duration = sf.info(AISHELL).duration
    ctm = [line.split() for line in (tmp_path / "words.ctm").read_text(encoding="utf-8").splitlines()]
    assert [row[4] for row in ctm] == list(AISHELL_TEXT)
    assert all(row[:2] == ["BAC009S0724W0121", "1"] and float(row[3]) > 0 for row in ctm)
    starts = [float(row[2]) for row in ctm]
    assert starts == sorted(starts) and float(ctm[-1][2]) + float(ctm[-1][3]) <= duration + 0.005
    grid = textgrid.TextGrid.fromFile(str(tmp_path / "textgrids" / "BAC009S0724W0121.TextGrid"))
    assert [tier.name for tier in grid.tiers] == ["words", "tokens"]
    for tier in grid.tiers:
        assert [i.mark for i in tier.intervals if i.mark] == list(AISHELL_TEXT)
        assert tier.intervals[0].minTime == 0 and tier.intervals[-1].maxTime == pytest.approx(duration, abs=1e-3)
        assert all(a.maxTime == b.minTime for a, b in zip(tier.intervals, tier.intervals[1:]))  # they tile it


# ---------------------------------------------------------------------------------- the formats
def test_json_ctm_and_textgrid_carry_the_same_times(bundle, tmp_path):
    """Words given with spaces are the aligned words; each format writes the same times."""
    text = tmp_path / "text"
    text.write_text("utt 广州市 房地产 中介 协会 分析\n", encoding="utf-8")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"utt {AISHELL}\n")
    runs = {fmt: paddle_asr("align", "--model", str(bundle), "--text", str(text), "--format", fmt, str(scp),
                            *(["--out", str(tmp_path / "grids")] if fmt == "textgrid" else []))
            for fmt in ("json", "ctm", "textgrid")}
    runs["tokens"] = paddle_asr("align", "--model", str(bundle), "--text", str(text), "--level", "token", str(scp))
    assert all(proc.returncode == 0 for proc in runs.values()), [p.stderr for p in runs.values()]
    (result,) = [json.loads(line) for line in runs["json"].stdout.splitlines()]
    assert [w["word"] for w in result["words"]] == ["广州市", "房地产", "中介", "协会", "分析"]
    assert "".join(t["token"] for t in result["tokens"]) == AISHELL_TEXT
    first = 0
    for word in result["words"]:  # a word spans its tokens and is as confident as the least of them
        mine = result["tokens"][first: first + len(word["word"])]
        first += len(mine)
        assert (word["start"], word["end"]) == (mine[0]["start"], mine[-1]["end"])
        assert word["conf"] == min(t["conf"] for t in mine)
    assert result["frame_seconds"] == 0.04 and result["duration"] == pytest.approx(sf.info(AISHELL).duration)
    check_times(result, result["duration"])
    for level, key in (("ctm", "words"), ("tokens", "tokens")):
        rows = [line.split() for line in runs[level].stdout.splitlines()]
        expected = [[f"{x['start']:.2f}", x["word" if key == "words" else "token"], f"{x['conf']:.2f}"]
                    for x in result[key]]
        assert [[r[2], r[4], r[5]] for r in rows] == expected
    grid = (tmp_path / "grids" / "utt.TextGrid").read_text(encoding="utf-8")
    assert grid.startswith('File type = "ooTextFile"\nObject class = "TextGrid"\n')
    for word in result["words"]:
        assert f'xmin = {word["start"]}\n            xmax = {word["end"]}\n            text = "{word["word"]}"' in grid


def test_english_words_are_joined_from_sentencepiece_pieces(bpe_bundle, tmp_path):
    """The LibriSpeech fixture against its transcript with a BPE model: CTM words are the transcript's
    words, JSON tokens its pieces."""
    text = tmp_path / "text"
    text.write_text(f"librispeech-1995-1837-0001 {LIBRI_TEXT}\n")  # a file is keyed by its name
    proc = paddle_asr("align", "--model", str(bpe_bundle), "--text", str(text), "--format", "json", str(LIBRI))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [w["word"] for w in result["words"]] == LIBRI_TEXT.split() and result["text"] == LIBRI_TEXT
    tokenizer = BpeTokenizer(CharTokenizer.from_file(bpe_bundle / "vocab.txt").units, bpe_bundle / BPE_MODEL)
    assert [t["token"] for t in result["tokens"]] == tokenizer.pieces(LIBRI_TEXT)
    check_times(result, result["duration"])
    ctm = paddle_asr("align", "--model", str(bpe_bundle), "--text", str(text), str(LIBRI))
    assert [line.split()[4] for line in ctm.stdout.splitlines()] == LIBRI_TEXT.split()


def test_words_of_a_text():
    units = ["<blank>", "<unk>", *"中介分析", "<eos>"]
    chars = CharTokenizer(units)
    assert transcript_words(chars, "中介分析") == [(c, [c]) for c in "中介分析"]  # no spaces: every character
    assert transcript_words(chars, " 中介，  分析。") == [("中介", ["中", "介"]), ("分析", ["分", "析"])]
    assert transcript_words(chars, "，") == []  # punctuation alone: nothing to align
    spelled = CharTokenizer(["<blank>", "<unk>", "<space>", *"ABC", "<eos>"])
    assert transcript_words(spelled, "AB C") == [("AB", ["A", "B"]), ("C", ["<space>", "C"])]


# ---------------------------------------------------------------------------------- the failures
def test_each_utterance_that_cannot_be_aligned_is_named_and_the_rest_are_written(bundle, tmp_path):
    """Units outside the vocabulary, more tokens than frames (repeats counting their blank), an empty
    transcript, unreadable audio, audio without a transcript and a transcript without audio: each is
    named by id with its reason on stderr, the exit status is 1, and the good utterances are written."""
    frames = Aligner(bundle).log_probs(read_audio(AISHELL)[0], [0]).shape[0]
    repeats = frames // 2 + 2  # fewer tokens than frames, but with a blank between each pair they need more
    assert repeats <= frames < frames_needed([5] * repeats) == 2 * repeats - 1
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00truncated")
    short = tmp_path / "short.wav"
    sf.write(short, read_audio(AISHELL)[0][:800].astype(np.int16), 16000)  # 50 ms
    good = {"good1": AISHELL_TEXT, "good2": "中介 协会"}
    texts = {**good, "oov": "广州龘市鱻", "long": (AISHELL_TEXT * 20)[: frames + 1], "repeats": "广" * repeats,
             "empty": "", "broken": AISHELL_TEXT, "short": "广", "no_audio": AISHELL_TEXT}
    (tmp_path / "text").write_text("".join(f"{k} {v}\n" for k, v in texts.items()), encoding="utf-8")
    wavs = {**{k: AISHELL for k in texts if k not in ("no_audio", "broken", "short")}, "broken": broken,
            "short": short, "no_text": AISHELL}
    (tmp_path / "wav.scp").write_text("".join(f"{k} {v}\n" for k, v in wavs.items()))
    proc = paddle_asr("align", "--model", str(bundle), "--text", "text", "--format", "json", "wav.scp", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [json.loads(line)["key"] for line in proc.stdout.splitlines()] == ["good1", "good2"]
    errors = dict(line[len("error: "):].split(": ", 1) for line in proc.stderr.splitlines()
                  if line.startswith("error: ") and "could not be aligned" not in line)
    assert set(errors) == {"oov", "long", "repeats", "empty", "broken", "short", "no_text", "no_audio"}
    assert "units outside the model's vocabulary: '鱻', '龘'; correct the text" in errors["oov"]
    assert f"{frames + 1} tokens need at least {frames + 1} encoder frames" in errors["long"]
    assert f"have {frames} (40 ms each)" in errors["long"]
    assert f"{repeats} tokens need at least {2 * repeats - 1} encoder frames (a blank between repeated" in errors[
        "repeats"]
    assert "the transcript is empty" in errors["empty"]
    assert f"cannot read audio {broken}" in errors["broken"]
    assert "the audio is too short to align (0.050 s)" in errors["short"]
    assert "has no transcript line with id 'no_text'" in errors["no_text"]
    assert "has a transcript in text but no audio among the inputs" in errors["no_audio"]
    assert "aligned 2 of 9 recordings" in proc.stderr and "8 utterance(s) could not be aligned" in proc.stderr


def test_a_recording_too_long_to_align_at_once_is_refused(bundle, monkeypatch):
    """The Viterbi table's size limit, lowered so that the AISHELL fixture passes it."""
    import paddle_asr.align

    waveform, _ = read_audio(AISHELL)
    aligner = Aligner(bundle)
    frames = aligner.log_probs(waveform, [0]).shape[0]
    monkeypatch.setattr(paddle_asr.align, "MAX_ALIGN_CELLS", frames * (2 * len(AISHELL_TEXT) + 1) - 1)
    with pytest.raises(AsrError, match=rf"4 s of audio with 12 tokens is too long to align at once \({frames} frames x "
                                       r"25 states > .*; cut the recording and its text into shorter utterances"):
        aligner.align("a", AISHELL, waveform, AISHELL_TEXT)
    monkeypatch.setattr(paddle_asr.align, "MAX_ALIGN_CELLS", frames * (2 * len(AISHELL_TEXT) + 1))
    assert len(aligner.align("a", AISHELL, waveform, AISHELL_TEXT).tokens) == len(AISHELL_TEXT)


def test_a_file_output_appears_whole_and_textgrid_needs_a_folder(bundle, tmp_path):
    (tmp_path / "text").write_text(f"a {AISHELL_TEXT}\n", encoding="utf-8")
    proc = paddle_asr("align", "--model", str(bundle), "--text", "text", "--format", "textgrid", str(AISHELL),
                      cwd=tmp_path)
    assert proc.returncode == 1 and "give their folder with --out" in proc.stderr
    scp = tmp_path / "a.scp"
    scp.write_text(f"a {AISHELL}\n")
    proc = paddle_asr("align", "--model", str(bundle), "--text", "text", "--out", "out/a.ctm", str(scp), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == ""
    assert len((tmp_path / "out/a.ctm").read_text(encoding="utf-8").splitlines()) == len(AISHELL_TEXT)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ctm"]  # no temporary file left
    proc = paddle_asr("align", "--model", str(bundle), "--text", "missing.txt", str(scp), cwd=tmp_path)
    assert proc.returncode == 1 and "--text missing.txt: no such file" in proc.stderr


# ---------------------------------------------------------------------------------- long audio
def subsampled(num_feats: int) -> int:
    """Encoder frames of x8 subsampling that reads 15 input frames per output frame."""
    return (num_feats - 15) // 8 + 1


def test_windows_cover_every_frame_once():
    """Encoder frames numbered by their position in the recording come out of the stitch in order,
    each once, whatever the window and overlap."""
    for num_feats, window, overlap in [(100, 200, 20), (1000, 200, 40), (1007, 160, 64), (5000, 808, 200)]:
        windows = encoder_windows(num_feats, window, overlap, 8)
        assert windows[0][0] == 0 and windows[-1][1] == num_feats
        assert all(a % 8 == 0 and b - a >= min(window, num_feats) for a, b in windows)
        assert all(b1 > a2 for (_, b1), (a2, _) in zip(windows, windows[1:]))  # consecutive windows overlap
        pieces = [(a // 8, np.arange(a // 8, a // 8 + subsampled(b - a))[:, None]) for a, b in windows]
        assert stitch_windows(pieces)[:, 0].tolist() == list(range(subsampled(num_feats)))


def test_a_recording_longer_than_the_window_is_aligned_in_windows(bundle):
    """The AISHELL fixture in 2 s windows: every encoder frame of the whole-file pass, and the text aligned."""
    waveform, _ = read_audio(AISHELL)
    whole = Aligner(bundle)
    windowed = Aligner(bundle, AlignOptions(window=2.0, overlap=1.0))
    assert windowed.log_probs(waveform, [0, 1]).shape == whole.log_probs(waveform, [0, 1]).shape
    result = windowed.align("a", AISHELL, waveform, AISHELL_TEXT)
    assert "".join(t["token"] for t in result.tokens) == AISHELL_TEXT
    check_times(result.to_json(), result.duration)
    with pytest.raises(AsrError, match="at least 1 s and at most half the window"):
        Aligner(bundle, AlignOptions(window=4.0, overlap=3.0))
    with pytest.raises(AsrError, match="more than the model's positional encoding takes"):
        Aligner(bundle, AlignOptions(window=500.0))


# ---------------------------------------------------------------------------------------- times
def test_a_token_ends_at_the_next_token_or_where_speech_under_it_stops():
    frame = 0.08
    spans = [(10, 11), (14, 16), (40, 41), (60, 61)]  # encoder frames of four spikes
    speech = [(0.7, 2.0), (3.1, 3.5), (4.7, 5.0)]
    times = [t for interval in token_intervals(spans, speech, frame, duration=6.0) for t in interval]
    assert times == pytest.approx([0.8, 1.12,   # speech goes on: until the next token starts
                                   1.12, 2.0,   # speech stops before the next token: there
                                   3.2, 3.5,
                                   4.8, 5.0])   # the last token: where its speech stops
    assert list(token_intervals([(10, 11)], [], frame, 6.0)[0]) == pytest.approx([0.8, 0.88])  # no speech: its spike


def test_speech_bounds_find_the_speech_of_a_real_utterance_inside_added_silence():
    """The AISHELL fixture with 0.5 s and 0.8 s of faint noise added around it: its speech moves by 0.5 s."""
    waveform, rate = read_audio(AISHELL)
    start, end = speech_bounds(waveform, rate)
    noise = np.random.default_rng(0).normal(0, 3, int(1.3 * rate)).astype(np.float32)
    padded = np.concatenate([noise[: rate // 2], waveform, noise[rate // 2:]])
    assert speech_bounds(padded, rate) == pytest.approx((start + 0.5, end + 0.5), abs=0.011)
    assert 0 < start < 0.5 and len(waveform) / rate - 0.5 < end <= len(waveform) / rate


def test_the_long_recording_report_counts_utterances_whose_ends_are_within_the_tolerance():
    """Two real utterances as the parts of a recording; alignments off by 1 and 3 frames at either end."""
    aishell, rate = read_audio(AISHELL)
    libri, _ = read_audio(LIBRI)
    gap = np.zeros(rate, np.float32)
    waveform = np.concatenate([gap, aishell, gap, libri, gap])
    parts = [{"key": "a", "text": "广州", "start": 1.0, "end": 1.0 + len(aishell) / rate},
             {"key": "b", "text": "IT WAS", "start": 2.0 + len(aishell) / rate,
              "end": 2.0 + (len(aishell) + len(libri)) / rate}]
    bounds = [tuple(p["start"] + t for t in speech_bounds(w, rate)) for p, w in zip(parts, (aishell, libri))]

    def alignment(shift_a: float, shift_b: float) -> dict:
        (a0, a1), (b0, b1) = bounds
        words = [("广", a0 + shift_a, a0 + 0.3), ("州", a1 - 0.3, a1),
                 ("IT", b0, b0 + 0.2), ("WAS", b1 - 0.3, b1 + shift_b)]
        return {"frame_seconds": 0.04, "words": [{"word": w, "start": s, "end": e} for w, s, e in words]}

    report = compare_alignment_with_parts(parts, alignment(0.04, -0.04), waveform, rate)
    assert report["within"] == 2 and report["fraction"] == 1.0 and report["tolerance"] == pytest.approx(0.08, abs=1e-5)
    report = compare_alignment_with_parts(parts, alignment(-0.12, 0.0), waveform, rate)
    assert [row[-1] for row in report["rows"]] == [False, True] and report["fraction"] == 0.5
    with pytest.raises(AsrError, match="do not spell part b"):
        compare_alignment_with_parts(parts, {"frame_seconds": 0.04, "words": alignment(0, 0)["words"][:3]},
                                     waveform, rate)
