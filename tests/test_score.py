"""Tests for paddle_asr.metrics.score (compute-wer.py compatible scorer).

Every expectation below was worked out by hand from compute-wer.py's rules (docs/scoring.md:
tokenisation, tie-break del -> ins -> diagonal,
padding to the wider token of each pair, wide characters counting 2).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from paddle_asr.metrics.score import ErrorCounts, ScoreError, main, read_transcripts, score, score_files, tokenize

RULE = "=" * 75


def counts(report, uid):
    c = report.per_utt[uid]
    return (c.n, c.c, c.s, c.d, c.i)


def block_lines(report, uid):
    """The lab:/rec: lines of one utterance block."""
    lines = report.text.split("\n")
    at = lines.index(f"utt: {uid}")
    return lines[at + 2], lines[at + 3]


# ------------------------------------------------------------- worked examples
def test_worked_example_mandarin_insertion():
    r = score({"U2": "今天天气"}, {"U2": "今天天天气"})
    assert counts(r, "U2") == (4, 4, 0, 0, 1)
    assert r.per_utt["U2"].rate == pytest.approx(25.0)
    assert "WER: 25.00 % N=4 C=4 S=0 D=0 I=1\n" in r.text
    # tie-break puts the inserted 天 in the last possible slot (before 气)
    assert block_lines(r, "U2") == ("lab: 今 天 天    气 ", "rec: 今 天 天 天 气 ")


def test_worked_example_english_words_and_attached_comma():
    r = score({"U3": "IT WAS THE FIRST"}, {"U3": "it was a first, great"})
    assert counts(r, "U3") == (4, 2, 2, 0, 1)
    assert "WER: 75.00 % N=4 C=2 S=2 D=0 I=1\n" in r.text
    assert block_lines(r, "U3") == ("lab: IT WAS THE FIRST        ",
                                    "rec: IT WAS A   FIRST, GREAT ")


def test_full_report_text_exact():
    refs = {"A1": "今天天气", "A2": "IT WAS THE FIRST"}
    hyps = {"A2": "it was a first, great", "A1": "今天天天气"}
    expected = (
        "\n"
        "utt: A1\n"
        "WER: 25.00 % N=4 C=4 S=0 D=0 I=1\n"
        "lab: 今 天 天    气 \n"
        "rec: 今 天 天 天 气 \n"
        "\n"
        "\n"
        "utt: A2\n"
        "WER: 75.00 % N=4 C=2 S=2 D=0 I=1\n"
        "lab: IT WAS THE FIRST        \n"
        "rec: IT WAS A   FIRST, GREAT \n"
        "\n"
        f"{RULE}\n"
        "\n"
        "Overall -> 50.00 % N=8 C=6 S=2 D=0 I=2\n"
        "Mandarin -> 25.00 % N=4 C=4 S=0 D=0 I=1\n"
        "English -> 75.00 % N=4 C=2 S=2 D=0 I=1\n"
        "Other -> 0.00 % N=0 C=0 S=0 D=0 I=0\n"   # 'FIRST,' only occurs in the hyp
        "\n"
        f"{RULE}\n"
    )
    r = score(refs, hyps)
    assert r.text == expected
    assert list(r.per_utt) == ["A1", "A2"]          # reference order, not hyp order
    assert (r.overall.n, r.overall.c, r.overall.s, r.overall.d, r.overall.i) == (8, 6, 2, 0, 2)
    assert r.missing_hyp == [] and r.extra_hyp == []


def test_verbose_0_and_2():
    r0 = score({"A": "今天"}, {"A": "今"}, verbose=0)
    assert r0.text == "Overall -> 50.00 % N=2 C=1 S=0 D=1 I=0\n\n"
    r2 = score({"A": "今天"}, {"A": "今"}, verbose=2)
    assert "\nlab(b'A'): 今 天 \nrec(b'A'): 今    \n\n" in r2.text


def test_verbose_2_prints_the_id_as_a_bytes_literal():
    # compute-wer.py prints '%s' % fid.encode('utf-8'), i.e. the repr of the UTF-8 bytes;
    # 句 is U+53E5 = E5 8F A5 in UTF-8.
    r = score({"句1": "好"}, {"句1": "好"}, char=False, verbose=2)
    assert "\nlab(b'\\xe5\\x8f\\xa51'): 好 \nrec(b'\\xe5\\x8f\\xa51'): 好 \n\n" in r.text


# ------------------------------------------------------------------ tie-breaks
def test_tie_swap_gives_insert_match_delete_not_two_substitutions():
    # ref 甲乙, hyp 乙甲: cell (2,2) has del = ins = sub = 2 -> deletion wins.
    r = score({"T": "甲乙"}, {"T": "乙甲"})
    assert counts(r, "T") == (2, 1, 0, 1, 1)
    assert block_lines(r, "T") == ("lab:    甲 乙 ", "rec: 乙 甲    ")


def test_tie_deletion_preferred_over_substitution_at_same_cell():
    # ref 甲乙, hyp 丙: at (2,1) del == sub == 2 -> 乙 deleted, 甲/丙 substituted.
    r = score({"T": "甲乙"}, {"T": "丙"})
    assert counts(r, "T") == (2, 0, 1, 1, 0)
    assert block_lines(r, "T") == ("lab: 甲 乙 ", "rec: 丙    ")


def test_repeated_token_deletes_the_last_copy():
    r = score({"T": "天天"}, {"T": "天"})
    assert counts(r, "T") == (2, 1, 0, 1, 0)
    assert block_lines(r, "T") == ("lab: 天 天 ", "rec: 天    ")


def test_insertions_at_both_ends():
    r = score({"T": "天"}, {"T": "今天气"})
    assert counts(r, "T") == (1, 1, 0, 0, 2)
    assert r.per_utt["T"].rate == pytest.approx(200.0)
    assert block_lines(r, "T") == ("lab:    天    ", "rec: 今 天 气 ")


def test_padding_uses_wider_token_of_each_pair():
    r = score({"T": "天 OK"}, {"T": "ABC 好"})
    assert counts(r, "T") == (2, 0, 2, 0, 0)
    assert block_lines(r, "T") == ("lab: 天  OK ", "rec: ABC 好 ")



def test_ambiguous_width_characters_count_two():
    # 'Ω' is non-ASCII, so it ends the run '5' and forms its own token; its
    # East-Asian width is Ambiguous, which compute-wer.py pads as 2 columns.
    # ('é' would not do: upper-casing gives 'É', whose width is Neutral.)
    assert tokenize("5Ω") == ["5", "Ω"]
    r = score({"W": "5Ω"}, {"W": "5"})
    assert counts(r, "W") == (2, 1, 0, 1, 0)
    assert block_lines(r, "W") == ("lab: 5 Ω ", "rec: 5    ")

# ------------------------------------------------------------ empty / missing
def test_empty_reference_counts_insertions_in_overall_only():
    r = score({"A": "天", "E": ""}, {"A": "天", "E": "你好"})
    assert counts(r, "E") == (0, 0, 0, 0, 2)
    assert r.per_utt["E"].rate == 0.0
    assert "utt: E\nWER: 0.00 % N=0 C=0 S=0 D=0 I=2\nlab:" in r.text
    assert "Overall -> 200.00 % N=1 C=1 S=0 D=0 I=2\n" in r.text


def test_all_empty_overall_rate_is_zero_and_no_lab_rec_lines():
    r = score({"E": ""}, {"E": "<unk>"})
    assert counts(r, "E") == (0, 0, 0, 0, 0)
    assert r.text == f"\nutt: E\nWER: 0.00 % N=0 C=0 S=0 D=0 I=0\n{RULE}\n\n" \
                     f"Overall -> 0.00 % N=0 C=0 S=0 D=0 I=0\n\n{RULE}\n"


def test_empty_hypothesis_is_all_deletions():
    r = score({"A": "今天天气"}, {"A": ""})
    assert counts(r, "A") == (4, 0, 0, 4, 0)
    assert "Overall -> 100.00 % N=4 C=0 S=0 D=4 I=0\n" in r.text


def test_missing_hypothesis_counted_as_deletions_by_default():
    refs = {"A": "今天", "B": "天气", "C": "好"}
    hyps = {"A": "今天", "C": "好", "X": "多余"}
    r = score(refs, hyps)
    assert r.missing_hyp == ["B"] and r.extra_hyp == ["X"]
    assert counts(r, "B") == (2, 0, 0, 2, 0)
    assert list(r.per_utt) == ["A", "B", "C"]
    assert (r.overall.n, r.overall.d) == (5, 2)
    assert "NOTE: 1 reference utterance(s) have no hypothesis line and were " \
           "counted as all deletions: B\n" in r.text
    assert "NOTE: 1 hypothesis utterance(s) not in the reference were ignored: X\n" in r.text
    assert r.text.index(RULE) < r.text.index("NOTE:")


def test_missing_hypothesis_skipped_with_flag():
    r = score({"A": "今天", "B": "天气"}, {"A": "今天"}, missing_as_deletions=False)
    assert "B" not in r.per_utt and r.missing_hyp == ["B"]
    assert (r.overall.n, r.overall.d) == (2, 0)
    assert "utt: B" not in r.text and "were skipped (not scored): B" in r.text


def test_no_notes_when_ids_match():
    assert "NOTE" not in score({"A": "天"}, {"A": "天"}).text


# -------------------------------------------------------- tokenisation / norm
def test_mixed_chinese_english_digits_and_clusters():
    assert tokenize("我有3个apple") == ["我", "有", "3", "个", "APPLE"]
    r = score({"M": "我有3个apple"}, {"M": "我有三个apples"})
    assert counts(r, "M") == (5, 3, 2, 0, 0)
    # cluster order = first appearance over hyp+ref words: 我(hyp) ... APPLES, then 3 (ref)
    assert list(r.clusters) == ["Mandarin", "English", "Number"]
    m, e, num = (r.clusters[k] for k in ("Mandarin", "English", "Number"))
    assert (m.n, m.c, m.s) == (3, 3, 0)
    assert (e.n, e.s) == (1, 1)
    assert (num.n, num.s) == (1, 1)
    assert "Number -> 100.00 % N=1 C=0 S=1 D=0 I=0\n" in r.text


def test_cluster_counts_insertions_by_hypothesis_word():
    r = score({"C": "你好"}, {"C": "你好 OK 12"})
    assert r.clusters["Mandarin"].n == 2 and r.clusters["Mandarin"].i == 0
    assert (r.clusters["English"].n, r.clusters["English"].i) == (0, 1)
    assert (r.clusters["Number"].n, r.clusters["Number"].i) == (0, 1)
    assert "English -> 0.00 % N=0 C=0 S=0 D=0 I=1\n" in r.text


def test_fullwidth_punctuation_dropped_ascii_kept_inside_words():
    assert tokenize("今天，天气。好！「对」《书》、；：？") == list("今天天气好对书")
    assert tokenize("a,b ,c !d? e?") == ["A,B", "C", "D?", "E?"]
    r = score({"P": "今天天气"}, {"P": "今天，天气。"})
    assert counts(r, "P") == (4, 4, 0, 0, 0)


def test_whitespace_and_ideographic_space_dropped():
    assert tokenize("  今\u3000天\t  ok\u3000go ") == ["今", "天", "OK", "GO"]


def test_tags_removed():
    assert tokenize("<unk>你好<noise>") == ["你", "好"]
    assert tokenize("hello<unk> <unk><noise> world") == ["HELLO", "WORLD"]
    assert tokenize("<unk>你", remove_tags=False) == ["<UNK>", "你"]
    r = score({"U": "你好"}, {"U": "<unk>你好<unk>"})
    assert counts(r, "U") == (2, 2, 0, 0, 0)


def test_case_folding():
    r = score({"C": "Hello World"}, {"C": "HELLO world"})
    assert counts(r, "C") == (2, 2, 0, 0, 0)
    r = score({"C": "Hello World"}, {"C": "HELLO World"}, case_sensitive=True)
    assert counts(r, "C") == (2, 1, 1, 0, 0)


def test_char0_is_plain_whitespace_split():
    assert tokenize("今天 天气， ok", char=False) == ["今天", "天气，", "OK"]
    r = score({"W": "今天 天气"}, {"W": "今天 天汽"}, char=False)
    assert counts(r, "W") == (2, 1, 1, 0, 0)


def test_error_counts():
    a = ErrorCounts(n=4, c=2, s=1, d=1, i=2)
    assert a.errors == 4 and a.rate == pytest.approx(100.0)
    assert ErrorCounts(i=3).rate == 0.0
    assert a.add(ErrorCounts(n=1, c=1)) is a
    assert (a.n, a.c, a.s, a.d, a.i) == (5, 3, 1, 1, 2)
    assert a.summary() == "80.00 % N=5 C=3 S=1 D=1 I=2"


# ---------------------------------------------------------------- file input
def test_read_transcripts(tmp_path: Path):
    f = tmp_path / "t.txt"
    f.write_text("\ufeffA 今天 天气\n\n  \nB\nC\tok go  \n", encoding="utf-8")
    assert read_transcripts(f) == {"A": "今天 天气", "B": "", "C": "ok go"}


def test_read_transcripts_duplicate_id(tmp_path: Path):
    f = tmp_path / "dup.txt"
    f.write_text("A x\nB y\nA z\n", encoding="utf-8")
    with pytest.raises(ScoreError, match=r"dup\.txt:3: duplicate utterance id 'A'"):
        read_transcripts(f)


def test_read_transcripts_bad_utf8(tmp_path: Path):
    f = tmp_path / "bad.txt"
    f.write_bytes("A 今天\n".encode() + b"B \xff\xfe\n")
    with pytest.raises(ScoreError, match=r"bad\.txt:2: not valid UTF-8"):
        read_transcripts(f)


def _write_pair(tmp_path: Path) -> tuple[Path, Path]:
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_text("A1 今天天气\nA2 今天\n", encoding="utf-8")
    hyp.write_text("A1 今天天天气\n", encoding="utf-8")
    return ref, hyp


def test_score_files_and_main(tmp_path: Path, capsys):
    ref, hyp = _write_pair(tmp_path)
    report = score_files(ref, hyp)
    assert report.missing_hyp == ["A2"]
    assert main(["--char=1", "--v=1", str(ref), str(hyp)]) == 0
    out = capsys.readouterr().out
    assert out == report.text
    assert "Overall -> 50.00 % N=6 C=4 S=0 D=2 I=1\n" in out

    assert main(["--ref", str(ref), "--hyp", str(hyp), "--v=0", "--keep-missing-skip"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Overall -> 25.00 % N=4 C=4 S=0 D=0 I=1\n\n")


def test_main_reports_errors(tmp_path: Path, capsys):
    ref, _ = _write_pair(tmp_path)
    assert main([str(ref), str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_missing_file_is_named_with_what_to_give(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 a b\n")
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'hyp'}: no such file;") and "UTTID text" in err
