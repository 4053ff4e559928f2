"""The synthetic demo corpus must look exactly like AISHELL-1 and be reproducible."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from paddle_asr.data.corpora.demo import generate_demo_corpus
from paddle_asr.data.corpora.espeak_synth import ESpeak, toneless

COUNTS = dict(num_train_speakers=2, num_dev_speakers=1, num_test_speakers=1, num_unseen_speakers=1, utts_per_speaker=4,
              train_utts_per_speaker=4, num_random_voices=1, random_voice_utts=3)
SPLITS = ("train", "dev", "test", "test_unseen_voices")
WAV_PATH = re.compile(r"(train|dev|test|test_unseen_voices)/(S\d{4})/BAC009(S\d{4})W\d{4}\.wav")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    logs: list[str] = []
    summary = generate_demo_corpus(out / "a", seed=123, log=logs.append, **COUNTS)
    return out, summary, logs


def _extract(root: Path) -> None:
    for archive in sorted((root / "wav").glob("*.tar.gz")):
        subprocess.run(["tar", "-xzf", archive.name], cwd=root / "wav", check=True)


def _read_transcript(root: Path) -> dict[str, str]:
    lines = (root / "transcript" / "aishell_transcript_v0.8.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split(" ", 1) for line in lines)


def test_layout_audio_and_transcripts(corpus):
    out, summary, _ = corpus
    root = out / "a" / "data_aishell"
    assert not summary["reused"]
    # Nothing but the AISHELL files (and the hidden marker) in data_aishell.
    assert sorted(p.name for p in root.iterdir()) == [".done", "transcript", "wav"]
    assert [p.name for p in (root / "transcript").iterdir()] == ["aishell_transcript_v0.8.txt"]
    archives = sorted(p.name for p in (root / "wav").iterdir())
    assert len(archives) == 6 and all(re.fullmatch(r"S\d{4}\.tar\.gz", a) for a in archives)
    assert not list(out.glob(".data_aishell*")), "temporary build dir left behind"

    _extract(root)
    texts = _read_transcript(root)
    wavs = sorted((root / "wav").glob("*/*/*.wav"))
    assert len(wavs) == 23
    speakers: dict[str, set[str]] = {s: set() for s in SPLITS}
    for wav in wavs:
        m = WAV_PATH.fullmatch(wav.relative_to(root / "wav").as_posix())
        assert m and m.group(2) == m.group(3), wav
        speakers[m.group(1)].add(m.group(2))
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        x, _ = sf.read(wav, dtype="int16")
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        assert rms > 300, f"{wav.name} is (nearly) silent"
        if wav.stem in texts:
            n = len(texts[wav.stem].replace(" ", ""))
            # 0.15-0.6 s per character plus 0.3-0.8 s of padding
            assert 0.15 * n + 0.3 < info.duration < 0.6 * n + 0.8, (wav.name, n, info.duration)
    assert [len(speakers[s]) for s in SPLITS] == [3, 1, 1, 1]
    voices = summary["speaker_voices"]
    assert sorted(voices[s] for s in speakers["train"])[-1] == "cmn+random00"  # the random voice trains
    for i, a in enumerate(SPLITS):  # no speaker and no voice in two splits
        for b in SPLITS[i + 1:]:
            assert not speakers[a] & speakers[b]
            assert not {voices[s] for s in speakers[a]} & {voices[s] for s in speakers[b]}, (a, b)

    # Every transcript line has a wav; exactly one wav per split has no line.
    ids = {w.stem for w in wavs}
    assert set(texts) <= ids
    missing = sorted(ids - set(texts))
    assert missing == summary["untranscribed_ids"] and len(missing) == 4
    assert {next(w.parts[-3] for w in wavs if w.stem == i) for i in missing} == set(SPLITS)
    for text in texts.values():
        assert re.fullmatch(r"[\u4e00-\u9fff]+( [\u4e00-\u9fff]+)*", text), text
        assert 6 <= len(text.replace(" ", "")) <= 14

    # Core text-design property: no two characters share a toneless syllable.
    chars = sorted(set("".join(texts.values()).replace(" ", "")))
    readings = [toneless(ESpeak.get().phonemes(c)) for c in chars]
    assert None not in readings and len(set(readings)) == len(chars)
    assert summary["num_chars"] >= 250


def test_deterministic_and_reused(corpus):
    out, summary, _ = corpus
    first = out / "a" / "data_aishell"
    again = generate_demo_corpus(out / "b", seed=123, log=lambda _: None, **COUNTS)
    second = out / "b" / "data_aishell"
    assert not again["reused"]
    for archive in sorted((first / "wav").glob("*.tar.gz")):
        assert archive.read_bytes() == (second / "wav" / archive.name).read_bytes(), archive.name
    t = "transcript/aishell_transcript_v0.8.txt"
    assert (first / t).read_bytes() == (second / t).read_bytes()

    # Same parameters: the .done record makes the call a no-op.
    before = {p: p.stat().st_mtime_ns for p in (first / "wav").glob("*.tar.gz")}
    logs: list[str] = []
    reused = generate_demo_corpus(out / "a", seed=123, log=logs.append, **COUNTS)
    assert reused["reused"] and "skipping" in " ".join(logs)
    assert reused["untranscribed_ids"] == summary["untranscribed_ids"]
    assert before == {p: p.stat().st_mtime_ns for p in (first / "wav").glob("*.tar.gz")}


def test_no_test_sentence_is_a_training_sentence(corpus):
    """Both test splits (and dev) hold sentences training never has, and no sentence twice."""
    out, _, _ = corpus
    root = out / "a" / "data_aishell"
    texts = _read_transcript(root)
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for wav in (root / "wav").glob("*/*/*.wav"):
        if wav.stem in texts:
            by_split[wav.parts[-3]].append(texts[wav.stem].replace(" ", ""))
    every = [t for texts_of in by_split.values() for t in texts_of]
    assert len(every) == len(set(every)) == 19
    for split in SPLITS[1:]:
        assert by_split[split] and not set(by_split[split]) & set(by_split["train"])


def test_the_unseen_voice_split_leaves_the_others_as_they_were(corpus):
    out, _, _ = corpus
    without = generate_demo_corpus(out / "c", seed=123, log=lambda _: None, **{**COUNTS, "num_unseen_speakers": 0})
    assert without["speakers"]["test_unseen_voices"] == 0
    first, other = out / "a" / "data_aishell" / "wav", out / "c" / "data_aishell" / "wav"
    assert sorted(p.name for p in other.glob("*.tar.gz")) == sorted(p.name for p in first.glob("S0[0-7]*.tar.gz"))
    for archive in other.glob("*.tar.gz"):
        assert archive.read_bytes() == (first / archive.name).read_bytes(), archive.name


def test_training_speakers_can_read_more_than_the_others(tmp_path):
    summary = generate_demo_corpus(tmp_path, log=lambda *_: None, **{**COUNTS, "utts_per_speaker": 2,
                                                                     "train_utts_per_speaker": 5})
    root = tmp_path / "data_aishell"
    _extract(root)
    wavs = {s: len(list((root / "wav" / s).rglob("*.wav"))) for s in SPLITS}
    assert wavs == {"train": 10 + 3, "dev": 2, "test": 2, "test_unseen_voices": 2}
    assert summary["utterances"] == wavs


def test_random_voices_are_drawn_in_range_and_espeak_speaks_them(tmp_path):
    import sys

    from paddle_asr.data.corpora.espeak_synth import data_with_variants, random_voices

    voices = random_voices(40, seed=5)
    assert list(voices)[:2] == ["random00", "random01"] and voices == random_voices(40, seed=5)
    assert voices != random_voices(40, seed=6)
    silenced = 0
    for name, text in voices.items():
        formants = {int(k): (int(f), int(h)) for k, f, h, _ in
                    (line.split()[1:] for line in text.splitlines() if line.startswith("formant"))}
        assert f"name {name}" in text and sorted(formants) == [1, 2, 3, 4, 5]
        assert 80 <= formants[1][0] <= 120 and 75 <= formants[2][0] <= 125
        assert all(85 <= formants[k][0] <= 115 for k in (3, 4, 5))
        assert all(70 <= formants[k][1] <= 130 for k in (1, 2))
        silenced += sum(formants[k][1] <= 15 for k in (3, 4, 5))
    assert 20 <= silenced <= 65  # 35 % of the 120 upper formants, give or take

    data = data_with_variants(tmp_path / "espeak-ng-data", {"random00": voices["random00"]})
    shipped = (ESpeak.get().data_path / "voices" / "!v")
    assert {p.name for p in (data / "voices" / "!v").iterdir()} == {p.name for p in shipped.iterdir()} | {"random00"}
    # A fresh process (espeak is one per process) speaks the random voice, and not as the language's own.
    code = ("import sys, numpy as np; from paddle_asr.data.corpora.espeak_synth import ESpeak; "
            "es = ESpeak.get(sys.argv[1]); kw = dict(rate=170, pitch=50, pitch_range=50, seed=1); "
            "a = es.synthesize('你好', 'cmn+random00', **kw); print(a.size, int(np.abs(a).max()))")
    out = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, check=True)
    size, peak = map(int, out.stdout.split())
    default = ESpeak.get().synthesize("你好", "cmn", rate=170, pitch=50, pitch_range=50, seed=1)
    assert size > 5000 and peak > 1000 and (size, peak) != (default.size, int(np.abs(default).max()))


def test_more_random_voices_than_espeak_can_list_is_a_clear_error(tmp_path):
    from paddle_asr.data.corpora.espeak_synth import data_with_variants, random_voices

    with pytest.raises(ValueError, match=r"too many: espeak-ng lists at most 349 voices .* ask for at most \d+"):
        data_with_variants(tmp_path / "espeak-ng-data", random_voices(120, seed=1))
    assert not (tmp_path / "espeak-ng-data").exists()
    # The generator says so before synthesising anything and leaves no partial corpus behind.
    with pytest.raises(ValueError, match="random voices are too many"):
        generate_demo_corpus(tmp_path / "c", log=lambda *_: None, **{**COUNTS, "num_random_voices": 120})
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
