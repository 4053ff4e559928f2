"""Golden test: our scorer prints exactly what the original compute-wer.py prints.

The fixtures in tests/fixtures/score/ (generated pairs, and the original script's output for
each option set) are written by tools/make_score_golden.py; see its docstring to regenerate.
"""
from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_asr.metrics.score import main, read_transcripts, score_files

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "score"
REF, HYP = FIXTURES / "ref.txt", FIXTURES / "hyp.txt"
OPTION_SETS = sorted(p.stem.removeprefix("expected_") for p in FIXTURES.glob("expected_char*_v*.txt"))
_COUNTS = r"([\d.]+) % N=(\d+) C=(\d+) S=(\d+) D=(\d+) I=(\d+)"


def _expected(name: str) -> str:
    return (FIXTURES / f"expected_{name}.txt").read_bytes().decode("utf-8")


def _options(name: str) -> dict:
    char, verbose = re.fullmatch(r"char(\d)_v(\d)", name).groups()
    return dict(char=char == "1", verbose=int(verbose))


def _first_difference(expected: str, actual: str) -> str:
    """A unified diff (lines as repr, to show spaces) of the first utterance block that differs."""
    exp_blocks, act_blocks = expected.split("\nutt: "), actual.split("\nutt: ")
    k = next((k for k, (e, a) in enumerate(zip(exp_blocks, act_blocks)) if e != a),
             min(len(exp_blocks), len(act_blocks)))
    e, a = (blocks[k] if k < len(blocks) else "" for blocks in (exp_blocks, act_blocks))
    where = f"utterance {(e or a).split(chr(10), 1)[0]!r}" if k else "the text before the first utterance"
    diff = difflib.unified_diff(e.splitlines(), a.splitlines(), "original", "ours", lineterm="", n=5)
    body = [line if line.startswith(("---", "+++", "@@")) else repr(line) for line in diff]
    return (f"first difference in {where} (block {k}; {len(exp_blocks)} blocks expected, "
            f"{len(act_blocks)} got):\n" + "\n".join(body))


def _assert_same_text(expected: str, actual: str) -> None:
    if actual != expected:
        pytest.fail(_first_difference(expected, actual), pytrace=False)


def _figures(groups: tuple[str, ...]) -> tuple[str, int, int, int, int, int]:
    """(printed rate, N, C, S, D, I) from the groups of one _COUNTS match."""
    rate, *ints = groups
    return (rate, *map(int, ints))


def _ours(counts) -> tuple[str, int, int, int, int, int]:
    return (f"{counts.rate:4.2f}", counts.n, counts.c, counts.s, counts.d, counts.i)


def test_fixture_has_enough_pairs():
    refs, hyps = read_transcripts(REF), read_transcripts(HYP)
    assert set(refs) == set(hyps)  # the original would skip a reference without a hypothesis
    assert len(refs) >= 200
    assert (refs["U2"], hyps["U2"]) == ("今天天气", "今天天天气")  # compute-wer.py: N=4 C=4 I=1
    assert (refs["U3"], hyps["U3"]) == ("IT WAS THE FIRST", "it was a first, great")
    assert set(OPTION_SETS) >= {"char1_v1", "char1_v0", "char1_v2", "char0_v1"}


@pytest.mark.parametrize("name", OPTION_SETS)
def test_text_matches_original(name: str):
    report = score_files(REF, HYP, **_options(name))
    _assert_same_text(_expected(name), report.text)


@pytest.mark.parametrize("name", OPTION_SETS)
def test_figures_match_original(name: str):
    expected = _expected(name)
    report = score_files(REF, HYP, **_options(name))
    overall = re.search(rf"^Overall -> {_COUNTS}$", expected, re.M)
    assert _figures(overall.groups()) == _ours(report.overall)
    per_utt = {m[1]: _figures(m.groups()[1:])
               for m in re.finditer(rf"\nutt: (\S+)\nWER: {_COUNTS}\n", expected)}
    if _options(name)["verbose"]:
        assert len(per_utt) == len(report.per_utt) >= 200
    assert {uid: _ours(report.per_utt[uid]) for uid in per_utt} == per_utt
    assert list(report.per_utt) == list(read_transcripts(REF))


@pytest.mark.parametrize("files", [
    pytest.param(["--ref", str(REF), "--hyp", str(HYP)], id="ref-hyp-options"),
    pytest.param([str(REF), str(HYP)], id="positional"),
])
def test_cli_matches_original(files: list[str]):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    res = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "score", *files, "--char", "1", "--v", "1"],
                         capture_output=True, cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr.decode()
    _assert_same_text(_expected("char1_v1"), res.stdout.decode("utf-8"))


def test_missing_hypothesis_skipped_like_original(capsys):
    # The original silently skips M2 (no hypothesis line) and ignores X9 (not in the
    # reference); with --keep-missing-skip ours prints the same text plus two NOTE lines.
    ref, hyp = FIXTURES / "missing_ref.txt", FIXTURES / "missing_hyp.txt"
    assert main(["--char=1", "--v=1", "--keep-missing-skip", str(ref), str(hyp)]) == 0
    out = capsys.readouterr().out
    expected = _expected("missing_char1_v1")
    _assert_same_text(expected, out[:len(expected)])
    notes = out[len(expected):].splitlines()
    assert len(notes) == 2 and all(line.startswith("NOTE: ") for line in notes)
    report = score_files(ref, hyp, missing_as_deletions=False)
    assert report.text == out
    assert report.missing_hyp == ["M2"] and report.extra_hyp == ["X9"]
    assert "M2" not in report.per_utt
