"""The synthetic English corpus: LibriSpeech's exact layout, deterministic, no homophones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from paddle_asr.data.corpora.english_demo import _ACCENTS, SUBSETS, _pronunciation, design_words, generate_english_demo
from paddle_asr.data.corpora.espeak_synth import ESpeak

FLAC = re.compile(r"^(?P<subset>[a-z0-9-]+)/(?P<spk>\d+)/(?P<chap>\d+)/(?P=spk)-(?P=chap)-\d{4}\.flac$")
TRANS = re.compile(r"^(?P<subset>[a-z0-9-]+)/(?P<spk>\d+)/(?P<chap>\d+)/(?P=spk)-(?P=chap)\.trans\.txt$")
SMALL = dict(num_train_speakers=2, num_dev_speakers=1, num_test_speakers=1, utts_per_speaker=5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("english")
    return out, generate_english_demo(out, log=lambda *_: None, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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
    assert len(keys) == sum(summary["utterances"].values()) == 4 * 5
    # Exactly the announced files lack a transcript line; every line has its audio.
    assert keys - set(lines) == set(summary["untranscribed_ids"])
    assert set(lines) <= keys
    # Speakers never shared between subsets.
    by_subset = {s: {Path(f).parts[1] for f in flacs if f.startswith(s)} for s in SUBSETS}
    assert all(not (by_subset[a] & by_subset[b]) for a in SUBSETS for b in SUBSETS if a < b)


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
                                    num_test_speakers=3, utts_per_speaker=2)
    marker = json.loads((tmp_path / "LibriSpeech" / ".done").read_text())
    voices = summary["speaker_voices"]
    variant = {spk: v.split("+")[1] for spk, v in voices.items()}
    train = {variant[p.name] for p in (tmp_path / "LibriSpeech" / "train-clean-100").iterdir()}
    held_out = {variant[p.name] for s in ("dev-clean", "test-clean") for p in (tmp_path / "LibriSpeech" / s).iterdir()}
    assert len(train) == 14 and len(held_out) == 5 and not train & held_out
    assert marker["summary"]["speaker_voices"] == voices
