"""The English path end to end: a small synthetic LibriSpeech-layout corpus through every stage.

The same shell driver as the recipes (`local/run_stages.sh --corpus librispeech`) runs in a
temporary recipe directory: FLAC chapters -> data sets from subsets -> sentencepiece units ->
training -> WER of the dynamic-graph, exported and INT8 models -> transcription with word times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, real_fixture

SMALL_CONFIG = f"""\
base: [{REPO}/recipes/librispeech_demo/conf/conformer.yaml, //conf/model/tiny_conformer.yaml]
training:
  max_epoch: 2
  batch_size: 8
  average_num: 2
  log_interval: 2
  ctc_only_updates: 0
data:
  bpe_size: 60
"""
DECODE = "methods: [ctc_greedy_search, ctc_prefix_beam_search, attention_rescoring]\nbeam_size: 4\nbatch_size: 4\n"
SETS = "train_clean_100=train-clean-100 dev=dev-clean test_clean=test-clean test_unseen_voices=test-unseen-voices"


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PADDLE_ASR_PYTHON=sys.executable)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("english")
    (d / "conf").mkdir()
    (d / "conf" / "train.yaml").write_text(SMALL_CONFIG)
    (d / "conf" / "decode.yaml").write_text(DECODE)
    from paddle_asr.data.corpora.english_demo import generate_english_demo

    generate_english_demo(d / "corpus", num_train_speakers=3, num_dev_speakers=1, num_test_speakers=1,
                          num_unseen_speakers=1, utts_per_speaker=10, train_utts_per_speaker=None, num_random_voices=0,
                          log=lambda *_: None)
    proc = run(["bash", str(REPO / "local/run_stages.sh"), "--corpus", "librispeech", "--data_dir", "corpus",
                "--config", "conf/train.yaml", "--decode_configs", "conf/decode.yaml", "--sets", SETS,
                "--train_set", "train_clean_100", "--test_sets", "test_clean test_unseen_voices", "--num_calib", "8",
                "--num_transcribe", "2", "--long_seconds", "20"], d)
    return d, proc.stdout + proc.stderr


def test_stage0_builds_sets_from_subsets_with_bpe_units(recipe):
    d, out = recipe
    summary = json.loads((d / "data" / "summary.json").read_text())
    assert set(summary["splits"]) == {"train_clean_100", "dev", "test_clean", "test_unseen_voices"}
    assert summary["splits"]["train_clean_100"]["kept"] == 3 * 10 - 1  # one file has no transcript on purpose
    assert summary["splits"]["test_unseen_voices"]["kept"] == 10 - 1
    assert summary["unit_type"] == "bpe" and (d / "data" / "lang_char" / "bpe.model").is_file()
    units = (d / "data" / "lang_char" / "vocab.txt").read_text().splitlines()
    assert any(u.startswith("\u2581") for u in units)
    assert (d / "data" / "train_clean_100" / "global_cmvn").is_file()
    assert "no transcript line" in out


def test_wer_for_dygraph_exported_and_int8(recipe):
    d, out = recipe
    exp = d / "exp" / "train"
    for runtime, prefix in (("dygraph", "test_clean"), ("inference-fp32", "test_clean_export_fp32"),
                            ("inference-int8", "test_clean_export_int8")):
        for method in ("ctc_greedy_search", "ctc_prefix_beam_search", "attention_rescoring"):
            r = json.loads((exp / f"{prefix}_{method}" / "result.json").read_text())
            assert r["metric"] == "WER" and r["model"] == runtime and r["test_set"] == "test_clean"
            # WER counts words: N is the number of reference words.
            refs = [json.loads(line)["text"] for line in (d / "data/test_clean/data.list").read_text().splitlines()]
            assert r["n"] == sum(len(t.split()) for t in refs)
    # Stage 5 reproduced the dynamic graph's hypotheses (it fails otherwise) and RESULTS.md says WER.
    results = (d / "RESULTS.md").read_text()
    assert "| WER % |" in results and "test_clean (" in results
    # The second test set, spoken by voice variants no other subset has, is scored by every runtime too.
    for prefix in ("test_unseen_voices", "test_unseen_voices_export_fp32", "test_unseen_voices_export_int8"):
        r = json.loads((exp / f"{prefix}_attention_rescoring" / "result.json").read_text())
        assert r["metric"] == "WER" and r["test_set"] == "test_unseen_voices"
    assert "test_unseen_voices (9 utts)" in results
    # The bundle carries the sentencepiece model, so it transcribes without the recipe.
    assert (exp / "export" / "int8" / "bpe.model").is_file()


def test_transcribe_real_librispeech_speech_with_word_times(recipe, tmp_path):
    d, _ = recipe
    wav = real_fixture("librispeech-1995-1837-0001.wav")
    proc = run([sys.executable, "-m", "paddle_asr.cli", "transcribe", "--bundle", "exp/train/export/int8",
                "--format", "json", "--progress", "off", str(wav)], d)
    result = json.loads(proc.stdout.splitlines()[0])
    assert result["duration"] == pytest.approx(8.73, abs=0.01)
    for seg in result["segments"]:
        words = seg.get("words", [])
        # Words are the segment text's words, in order, timed inside the segment.
        assert " ".join(w["word"] for w in words) == seg["text"]
        assert all(seg["start"] <= w["start"] <= w["end"] <= seg["end"] for w in words)
