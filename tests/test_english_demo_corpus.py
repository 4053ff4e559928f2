"""The synthetic English corpus: LibriSpeech's exact layout, deterministic, no homophones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from paddle_asr.data.corpora.demo import _EXTRA_VOICES
from paddle_asr.data.corpora.english_demo import (
    _ACCENTS,
    _DEV_VARIANTS,
    _FIRST_SPEAKER,
    _TEST_VARIANTS,
    _TRAIN_VARIANTS,
    _UNSEEN_POOL,
    SUBSETS,
    UNSEEN,
    _pronunciation,
    _unseen_variants,
    design_words,
    generate_english_demo,
    make_sentences,
)
from paddle_asr.data.corpora.espeak_synth import ESpeak

FLAC = re.compile(r"^(?P<subset>[a-z0-9-]+)/(?P<spk>\d+)/(?P<chap>\d+)/(?P=spk)-(?P=chap)-\d{4}\.flac$")
TRANS = re.compile(r"^(?P<subset>[a-z0-9-]+)/(?P<spk>\d+)/(?P<chap>\d+)/(?P=spk)-(?P=chap)\.trans\.txt$")
SMALL = dict(num_train_speakers=2, num_dev_speakers=1, num_test_speakers=1, num_unseen_speakers=1, utts_per_speaker=5,
             train_utts_per_speaker=None, num_random_voices=1, random_voice_utts=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("english")
    return out, generate_english_demo(out, log=lambda *_: None, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _texts_by_subset(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {s: [] for s in SUBSETS}
    for trans in root.glob("*/*/*/*.trans.txt"):
        out[trans.relative_to(root).parts[0]] += [line.split(" ", 1)[1] for line in trans.read_text().splitlines()]
    return out


def test_layout_is_librispeech(corpus):
    out, summary = corpus
    root = out / "LibriSpeech"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(SUBSETS)
    flacs, lines = [], {}
    for rel in _files(root):
        if rel == ".done":
            continue
        assert FLAC.match(rel) or TRANS.match(rel), rel
        if rel.endswith(".flac"):
            flacs.append(rel)
        else:
            text = (root / rel).read_text(encoding="utf-8").splitlines()
            assert text == sorted(text)
            for line in text:
                key, words = line.split(" ", 1)
                assert re.fullmatch(r"[A-Z']+( [A-Z']+){3,11}", words), line
                lines[key] = words
    keys = {Path(f).name.removesuffix(".flac") for f in flacs}
    assert len(keys) == sum(summary["utterances"].values()) == 5 * 5 + 2
    # Exactly the announced files lack a transcript line; every line has its audio.
    assert keys - set(lines) == set(summary["untranscribed_ids"])
    assert set(lines) <= keys
    # Speakers never shared between subsets.
    by_subset = {s: {Path(f).parts[1] for f in flacs if f.startswith(s)} for s in SUBSETS}
    assert all(not (by_subset[a] & by_subset[b]) for a in SUBSETS for b in SUBSETS if a < b)
    # The random voice is the third training speaker.
    assert sorted(v.split("+")[1] for k, v in summary["speaker_voices"].items()
                  if k in by_subset[SUBSETS[0]])[-1] == "random00"


def test_audio_is_16k_mono_16bit_flac_with_plausible_lengths(corpus):
    out, summary = corpus
    total = 0.0
    for path in (out / "LibriSpeech").rglob("*.flac"):
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        assert 1.0 < info.duration < 10.0
        audio = sf.read(path, dtype="int16")[0]
        assert np.abs(audio).max() > 1000  # speech, not silence
        total += info.duration
    assert total == pytest.approx(summary["total_seconds"], abs=0.05)


def test_deterministic_and_reused(corpus, tmp_path):
    out, _ = corpus
    again = generate_english_demo(tmp_path, log=lambda *_: None, **SMALL)
    assert not again["reused"]
    # Every FLAC and transcript byte-identical (the marker holds the path and the time taken).
    ours, theirs = _files(tmp_path / "LibriSpeech"), _files(out / "LibriSpeech")
    del ours[".done"], theirs[".done"]
    assert ours == theirs
    marker = (tmp_path / "LibriSpeech" / ".done").stat().st_mtime_ns
    logs: list[str] = []
    third = generate_english_demo(tmp_path, log=logs.append, **SMALL)
    assert third["reused"] and "skipping generation" in logs[0]
    assert (tmp_path / "LibriSpeech" / ".done").stat().st_mtime_ns == marker


def test_no_two_words_sound_alike_and_voices_are_unseen():
    words = [w for ws in design_words().values() for w in ws]
    assert len(words) == len(set(words)) and len(words) > 250
    es = ESpeak.get()
    sounds = [_pronunciation(es, w) for w in words]
    assert len(set(sounds)) == len(sounds)
    # Nor in any of the accents the corpus speaks (the West Midlands voice drops h: HAT would be AT).
    for accent in _ACCENTS:
        spoken = [re.sub(r"[',\s]", "", es.phonemes(w.lower(), voice=accent)) for w in words]
        assert len(set(spoken)) == len(spoken), accent
    # The pronunciation ignores stress only: to/two/too would collide, so the check is real.
    assert _pronunciation(es, "to") == _pronunciation(es, "two")


def test_test_voice_variants_are_not_in_training(tmp_path):
    summary = generate_english_demo(tmp_path, log=lambda *_: None, num_train_speakers=14, num_dev_speakers=2,
                                    num_test_speakers=3, utts_per_speaker=2,
                                    train_utts_per_speaker=None, num_random_voices=0)
    marker = json.loads((tmp_path / "LibriSpeech" / ".done").read_text())
    voices = summary["speaker_voices"]
    variant = {spk: v.split("+")[1] for spk, v in voices.items()}
    train = {variant[p.name] for p in (tmp_path / "LibriSpeech" / "train-clean-100").iterdir()}
    held_out = {variant[p.name] for s in ("dev-clean", "test-clean") for p in (tmp_path / "LibriSpeech" / s).iterdir()}
    assert len(train) == 14 and len(held_out) == 5 and not train & held_out
    assert marker["summary"]["speaker_voices"] == voices


def test_unseen_voice_variants_are_drawn_from_the_variants_no_other_subset_lists(tmp_path):
    summary = generate_english_demo(tmp_path, log=lambda *_: None, num_train_speakers=1, num_dev_speakers=1,
                                    num_test_speakers=1, num_unseen_speakers=3, utts_per_speaker=2,
                                    train_utts_per_speaker=None, num_random_voices=0)
    unseen = [summary["speaker_voices"][p.name] for p in sorted((tmp_path / "LibriSpeech" / UNSEEN).iterdir())]
    variants = [v.split("+")[1] for v in unseen]
    listed = set(_TRAIN_VARIANTS + _DEV_VARIANTS + _TEST_VARIANTS)
    # Usable variants (the Mandarin demo's list), never one train, dev or test may use, three different ones.
    assert len(set(variants)) == 3 and set(variants) <= set(_EXTRA_VOICES) and not set(variants) & listed
    assert all(v.split("+")[0] in _ACCENTS for v in unseen)
    # Drawn at random: the seed decides, and another seed draws other variants.
    assert variants == _unseen_variants(3, 20261122) == ["boris", "Lee", "paul"]
    assert len({tuple(_unseen_variants(3, seed)) for seed in range(10)}) > 5
    with pytest.raises(ValueError, match="only 18 espeak voice variants are left for 19"):
        generate_english_demo(tmp_path / "x", log=lambda *_: None, num_unseen_speakers=19, utts_per_speaker=2,
                              train_utts_per_speaker=None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    # Speaker k of a subset is first + 17 k: no two subsets share an id, whatever the counts.
    ids = {s: {first + 17 * k for k in range(300)} for s, first in _FIRST_SPEAKER.items()}
    assert all(not ids[a] & ids[b] for a in SUBSETS for b in SUBSETS if a < b)


def test_no_test_sentence_is_a_training_sentence(corpus):
    """Both test subsets (and dev) hold sentences training never has, and no sentence is in two places."""
    out, _ = corpus
    texts = _texts_by_subset(out / "LibriSpeech")
    every = [t for subset in SUBSETS for t in texts[subset]]
    assert len(every) == len(set(every)) == 5 * 5 + 2 - len(SUBSETS)  # one line per subset left out on purpose
    for subset in SUBSETS[1:]:
        assert texts[subset] and not set(texts[subset]) & set(texts["train-clean-100"]), subset
    # The exclusion is real: the generator that would have made these sentences skips them.
    first = make_sentences(40, np.random.default_rng(7))
    again = make_sentences(40, np.random.default_rng(7), exclude=frozenset(first[:20]))
    assert again[:20] != first[:20] and not set(again) & set(first[:20])


def test_the_unseen_voice_subset_leaves_the_others_as_they_were(corpus, tmp_path):
    out, _ = corpus
    without = generate_english_demo(tmp_path, log=lambda *_: None, **{**SMALL, "num_unseen_speakers": 0})
    assert without["speakers"][UNSEEN] == 0 and not (tmp_path / "LibriSpeech" / UNSEEN).exists()
    ours = _files(tmp_path / "LibriSpeech")
    theirs = {k: v for k, v in _files(out / "LibriSpeech").items() if not k.startswith(UNSEEN)}
    del ours[".done"], theirs[".done"]
    assert ours == theirs


def _voiced_fraction(x: np.ndarray, rate: int = 22050) -> float:
    """Share of the 30 ms frames with speech energy that are periodic (autocorrelation peak at 60-500 Hz)."""
    x = x.astype(np.float64)
    size, floor = int(0.03 * rate), 0.05 * np.sqrt(np.mean(x**2))
    frames = [x[s:s + size] - x[s:s + size].mean() for s in range(0, len(x) - size, size // 2)]
    frames = [f for f in frames if np.sqrt(np.mean(f**2)) >= floor]
    acs = [np.correlate(f, f, "full")[size - 1:] for f in frames]
    return sum(ac[rate // 500:rate // 60].max() > 0.45 * ac[0] for ac in acs) / len(acs)


def test_the_unseen_voice_pool_speaks_english_like_the_training_variants():
    """The 18 variants left for test-unseen-voices, over en-US: normal length, as voiced as the training ones."""
    assert len(_UNSEEN_POOL) == 18
    es = ESpeak.get()
    text = "the old captain found a letter in the garden yesterday"

    def speak(variant: str) -> np.ndarray:
        return es.synthesize(text, f"en-US+{variant}", rate=170, pitch=50, pitch_range=50, seed=7)

    plain = es.synthesize(text, "en-US", rate=170, pitch=50, pitch_range=50, seed=7).size
    trained = [_voiced_fraction(speak(v)) for v in _TRAIN_VARIANTS[:14]]
    for variant in _UNSEEN_POOL:
        audio = speak(variant)
        assert 0.95 < audio.size / plain < 1.08, variant
        assert _voiced_fraction(audio) >= min(trained) - 0.05, variant
    # The check is real: voiceless variants the Mandarin demo excludes fail it.
    for variant in ("whisper", "croak", "klatt"):
        assert _voiced_fraction(speak(variant)) < min(trained) - 0.05, variant


def test_training_speakers_can_read_more_than_the_others(tmp_path):
    summary = generate_english_demo(tmp_path, log=lambda *_: None, num_train_speakers=2, num_dev_speakers=1,
                                    num_test_speakers=1, num_unseen_speakers=1, utts_per_speaker=2,
                                    train_utts_per_speaker=5, num_random_voices=0)
    flacs = {s: len(list((tmp_path / "LibriSpeech" / s).rglob("*.flac"))) for s in SUBSETS}
    assert flacs == {"train-clean-100": 10, "dev-clean": 2, "test-clean": 2, UNSEEN: 2}
    assert summary["utterances"] == flacs
