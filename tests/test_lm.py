"""Character n-gram LMs (paddle_asr.lm) and CTC beam search with LM fusion (paddle_asr.decode.lm_search).

The LM checks are properties any correct back-off model has (each conditional distribution sums
to one, held-out perplexity beats a unigram's, the ARPA file round-trips) plus agreement with KenLM
reading the same file. The search checks pin it to our PaddleSpeech-exact prefix beam search when
the LM weight is zero, and show the LM deciding what the acoustics leave open.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from paddle_asr.cli import main as cli_main
from paddle_asr.decode.lm_search import _candidates_per_frame, ctc_beam_search_with_lm, ctc_beam_search_with_lm_batch
from paddle_asr.decode.search import ctc_prefix_beam_search, ctc_prefix_beam_search_batch
from paddle_asr.errors import AsrError
from paddle_asr.lm import (
    BOS,
    EOS,
    UNK,
    NgramScorer,
    build_kneser_ney,
    load_language_model,
    perplexity,
    read_arpa,
    read_transcripts,
    transcript_words,
    write_arpa,
)
from paddle_asr.lm.kneser_ney import FALLBACK_DISCOUNTS, Discounts
from paddle_asr.lm.scorer import sentence_log10

# A small hand-written corpus (AISHELL-like word-segmented transcripts).
CORPUS = [
    "今天 天气 很 好",
    "我们 去 公园 玩",
    "明天 可能 下雨",
    "今天 我们 在 家 看书",
    "天气 好 我们 就 去 公园",
    "明天 我们 去 公园 看 花",
    "下雨 了 我们 在 家",
    "公园 里 的 花 很 好看",
    "我们 明天 去 看 电影",
    "今天 的 电影 很 好看",
]
CHARS = sorted({c for line in CORPUS for c in line if not c.isspace()})
FIXTURES = Path(__file__).parent / "fixtures" / "lm"


def markov_corpus(n: int, seed: int) -> list[list[str]]:
    """Sentences from a fixed first-order Markov chain over CHARS, so context helps prediction."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = [rng.choice(CHARS[:8])]
        for _ in range(rng.randint(2, 12)):
            s.append(CHARS[(CHARS.index(s[-1]) + rng.choice((1, 1, 1, 2, 5))) % len(CHARS)])
        out.append(s)
    return out


def sentences(lines=CORPUS) -> list[list[str]]:
    return [transcript_words(line) for line in lines]


def predictable(scorer: NgramScorer) -> list[str]:
    return [g[0] for g in scorer.model.ngrams[0] if g[0] != BOS]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------------------------------------
# Text


def test_transcript_words_are_characters():
    assert transcript_words("而 对 楼市  成交") == ["而", "对", "楼", "市", "成", "交"]
    assert transcript_words(" 今天 天气 ", keep_spaces=True) == ["今", "天", "<space>", "天", "气"]
    assert transcript_words("   ") == []


def test_read_transcripts_formats(tmp_path):
    (tmp_path / "data.list").write_text(
        json.dumps({"key": "a", "wav": "a.wav", "duration": 1.0, "text": "今天"}, ensure_ascii=False) + "\n\n",
        encoding="utf-8",
    )
    (tmp_path / "text").write_text("utt1 今天 天气\nutt2\n", encoding="utf-8")
    (tmp_path / "lines.txt").write_text("今天\n好\n", encoding="utf-8")
    assert list(read_transcripts(tmp_path / "data.list")) == ["今天"]
    assert list(read_transcripts(tmp_path / "text")) == ["今天 天气"]
    assert list(read_transcripts(tmp_path / "lines.txt")) == ["今天", "好"]
    (tmp_path / "bad.list").write_text('{"key": "a"}\n', encoding="utf-8")
    with pytest.raises(AsrError, match="bad.list:1"):
        list(read_transcripts(tmp_path / "bad.list"))


# ------------------------------------------------------------------------------------------------
# Estimation and ARPA files


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_arpa_round_trip(tmp_path, order):
    model, report = build_kneser_ney(sentences(), order)
    path = tmp_path / "lm.arpa"
    write_arpa(model, path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("\n\\data\\\n") and text.rstrip().endswith("\\end\\")
    for n in range(1, order + 1):
        assert f"ngram {n}={report.ngram_counts[n - 1]}" in text and f"\\{n}-grams:" in text
    back = read_arpa(path)
    assert back.order == order and back.counts() == model.counts()
    for table, table_back in zip(model.ngrams, back.ngrams):
        assert table.keys() == table_back.keys()
        for gram, (p, b) in table.items():
            assert table_back[gram] == pytest.approx((p, b), abs=1e-6)
    # Gzip is transparent both ways.
    write_arpa(model, tmp_path / "lm.arpa.gz")
    assert read_arpa(tmp_path / "lm.arpa.gz").counts() == model.counts()
    # Deterministic bytes for the same text.
    write_arpa(build_kneser_ney(sentences(), order)[0], tmp_path / "again.arpa")
    assert (tmp_path / "again.arpa").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_conditional_distribution_sums_to_one(tmp_path, order):
    """Sum over the predictable vocabulary (all words, </s>, <unk>; not <s>) for many histories:
    sentence start, every context the model lists, unseen contexts, and after an unknown word."""
    model, _ = build_kneser_ney(markov_corpus(200, seed=1), order)
    write_arpa(model, tmp_path / "lm.arpa")
    scorer = NgramScorer.from_arpa(tmp_path / "lm.arpa")  # the file, as a decoder reads it
    vocab = predictable(scorer)
    assert EOS in vocab and UNK in vocab and BOS not in vocab
    histories = [scorer.begin_state(), scorer.null_state(), ("没", "见", "过"), (BOS, "没"), (UNK,)]
    for n in range(1, order):
        histories += list(scorer.model.ngrams[n - 1])[:40]  # contexts of every length
    for history in histories:
        state = tuple(history)[-(order - 1):] if order > 1 else ()
        total = sum(10 ** scorer.score(state, w)[0] for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-5), (history, total)


def test_heldout_perplexity_beats_unigram():
    train, heldout = markov_corpus(400, seed=2), markov_corpus(60, seed=3)
    ppl = {order: perplexity(NgramScorer(build_kneser_ney(train, order)[0]), heldout) for order in (1, 2, 3, 5)}
    assert all(math.isfinite(p) and p > 1 for p in ppl.values())
    for order in (2, 3, 5):
        assert ppl[order] < 0.6 * ppl[1], ppl
    # Unseen words are scored through <unk>, so perplexity stays finite.
    assert math.isfinite(perplexity(NgramScorer(build_kneser_ney(train, 3)[0]), [["从", "未", "见"]]))


def test_matches_kenlm_lmplz_estimates():
    """Same text, same discounts -> KenLM lmplz's n-grams, probabilities and backoffs (fixture: its
    4-gram ARPA file). Our own discount estimates agree with lmplz's at order 4; at order 3 lmplz's
    D2/D3 differ because it files its last 3-gram under the raw count (see build_kneser_ney)."""
    sents = [line.split() for line in (FIXTURES / "markov800.txt").read_text(encoding="utf-8").splitlines()]
    theirs = read_arpa(FIXTURES / "lmplz_o4.arpa")
    lmplz_discounts = [
        FALLBACK_DISCOUNTS, FALLBACK_DISCOUNTS, (0.186047, 0.524917, 2.8753), (0.395034, 1.08906, 1.84942)
    ]
    _, report = build_kneser_ney(sents, 4)
    d4 = report.discounts[3]
    assert (d4.d1, d4.d2, d4.d3) == pytest.approx(lmplz_discounts[3], abs=1e-5)
    assert report.discounts[2].d1 == pytest.approx(lmplz_discounts[2][0], abs=1e-5)
    ours, _ = build_kneser_ney(sents, 4, discounts=[Discounts(*d) for d in lmplz_discounts])
    for n, (table, table_theirs) in enumerate(zip(ours.ngrams, theirs.ngrams), 1):
        assert table.keys() == table_theirs.keys(), n
        for gram, (prob, backoff) in table.items():
            if gram != (BOS,):  # lmplz writes 0 for the never-predicted <s>, we write -99
                assert prob == pytest.approx(table_theirs[gram][0], abs=1e-5), gram
            assert backoff == pytest.approx(table_theirs[gram][1], abs=1e-5), gram


def test_tiny_corpus_uses_fallback_discounts_and_stays_normalised():
    model, report = build_kneser_ney([["你", "好"]], 3)
    assert all(d.fallback and (d.d1, d.d2, d.d3) == FALLBACK_DISCOUNTS for d in report.discounts)
    scorer = NgramScorer(model)
    for state in [scorer.begin_state(), (BOS, "你"), ("你", "好")]:
        assert sum(10 ** scorer.score(state, w)[0] for w in predictable(scorer)) == pytest.approx(1.0, abs=1e-9)


def test_extra_vocabulary_gets_the_unk_share():
    model, report = build_kneser_ney(sentences(), 3, vocabulary=["龘"])
    scorer = NgramScorer(model)
    assert "龘" in scorer and UNK not in scorer and "今" in scorer
    assert scorer.score((), "龘")[0] == pytest.approx(scorer.score((), UNK)[0])
    assert report.vocabulary == len(CHARS) + 3  # characters, </s>, <unk>, 龘


def test_reads_a_foreign_arpa_file(tmp_path):
    """SRILM-style file: a header comment, a missing backoff column, no <unk> (KenLM then uses -100)."""
    path = tmp_path / "srilm.arpa"
    path.write_text(
        "written by hand\n\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.5\n-0.5\ta\t-0.25\n"
        "-0.7\tb\n-0.9\t</s>\n\n\\2-grams:\n-0.2\t<s> a\n-0.3\ta b\n\n\\end\\\n",
        encoding="utf-8",
    )
    lm = load_language_model(path)
    assert isinstance(lm, NgramScorer) and lm.order == 2
    s = lm.begin_state()
    assert lm.score(s, "a")[0] == pytest.approx(-0.2)
    assert lm.score(s, "b")[0] == pytest.approx(-0.5 - 0.7)  # backoff(<s>) + P(b)
    assert lm.score(("a",), "b") == (pytest.approx(-0.3), ("b",))
    assert lm.score(("a",), "zzz")[0] == pytest.approx(-0.25 - 100.0)
    assert sentence_log10(lm, ["a", "b"]) == pytest.approx([-0.2, -0.3, -0.9])
    assert NgramScorer(read_arpa(path), oov_log10=-1000.0).score(("a",), "zzz")[0] == -1000.0


@pytest.mark.parametrize(
    "content, match",
    [
        ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\ta\n", "end"),
        ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\ta\n\\end\\\n", "declares 2 1-grams"),
        ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\ta b c d\n\\end\\\n", ":5: a 1-gram line"),
        ("nothing here\n", "end"),
    ],
)
def test_malformed_arpa_is_reported(tmp_path, content, match):
    path = tmp_path / "bad.arpa"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AsrError, match=match):
        read_arpa(path)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_scores_match_kenlm(tmp_path, order):
    """KenLM reading our ARPA file gives our scores (within its float32 storage)."""
    import kenlm
    model, _ = build_kneser_ney(markov_corpus(300, seed=4), order)
    path = tmp_path / "lm.arpa"
    write_arpa(model, path)
    ours = NgramScorer.from_arpa(path)
    theirs = kenlm.Model(str(path))
    for words in markov_corpus(40, seed=5) + [["没", "见", "过", "的", "字"], sentences()[0]]:
        expected = [s for s, _, _ in theirs.full_scores(" ".join(words), bos=True, eos=True)]
        assert sentence_log10(ours, words) == pytest.approx(expected, abs=1e-4)
    kl = load_language_model(path, backend="kenlm")
    assert kl.order == order and "今" in kl and "没" not in kl
    state = kl.begin_state()
    assert kl.score(state, "今")[0] == pytest.approx(ours.score(ours.begin_state(), "今")[0], abs=1e-4)


def test_load_language_model_errors(tmp_path):
    with pytest.raises(AsrError, match="does not exist"):
        load_language_model(tmp_path / "missing.arpa")
    with pytest.raises(AsrError, match="backend"):
        (tmp_path / "x.arpa").write_text("\\data\\\n", encoding="utf-8")
        load_language_model(tmp_path / "x.arpa", backend="srilm")


# ------------------------------------------------------------------------------------------------
# The recipe stage


def test_build_lm_command(tmp_path, capsys):
    train = tmp_path / "train.list"
    train.write_text(
        "".join(json.dumps({"key": f"u{i}", "wav": "x.wav", "duration": 1.0, "text": t}, ensure_ascii=False) + "\n"
                for i, t in enumerate(CORPUS * 3)),
        encoding="utf-8",
    )
    dev = tmp_path / "dev.txt"
    dev.write_text("今天 我们 去 公园\n明天 天气 很 好\n", encoding="utf-8")
    units = tmp_path / "units.txt"
    units.write_text("".join(f"{u}\n" for u in ["<blank>", "<unk>", *CHARS, "龘", "<eos>"]), encoding="utf-8")
    out = tmp_path / "lm" / "char_3gram.arpa"
    rc = cli_main(["build-lm", "--text", str(train), "--out", str(out), "--order", "3",
                   "--units", str(units), "--dev", str(dev)])
    assert rc == 0
    summary = json.loads((tmp_path / "lm" / "char_3gram.json").read_text(encoding="utf-8"))
    assert summary["order"] == 3 and summary["sentences"] == 30
    assert math.isfinite(summary["dev_perplexity"]) and summary["dev_perplexity"] < summary["dev_perplexity_unigram"]
    lines = (tmp_path / "lm" / "char_3gram.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "今 天 天 气 很 好" and len(lines) == 30
    lm = load_language_model(out)
    assert "龘" in lm and "<blank>" not in lm and "<eos>" not in lm
    assert "dev perplexity" in capsys.readouterr().out
    assert cli_main(["build-lm", "--text", str(tmp_path / "none.list"), "--out", str(out)]) == 1


# ------------------------------------------------------------------------------------------------
# Beam search with LM fusion


@pytest.fixture(scope="module")
def char_lm() -> NgramScorer:
    return NgramScorer(build_kneser_ney(sentences(CORPUS * 2) + markov_corpus(100, seed=6), 3)[0])


VOCAB = ["<blank>", "<unk>", *CHARS, "工", "<eos>"]  # 工 sounds like 公 and never occurs in the text


def test_zero_weights_reproduce_the_prefix_beam_search(char_lm):
    rng = np.random.default_rng(0)
    for trial in range(150):
        frames = int(rng.integers(0, 14))
        x = rng.normal(size=(frames, len(VOCAB))) * (3.0 if trial % 2 else 1.0)
        if trial % 3 == 0:
            x = np.round(x)  # exact ties: the order of equal candidates must match too
        lp = log_softmax(x).astype(np.float32)
        for beam in (1, 4, 10):
            expected = ctc_prefix_beam_search(lp, beam)
            assert ctc_beam_search_with_lm(lp, VOCAB, char_lm, 0.0, 0.0, beam) == expected
            assert ctc_beam_search_with_lm(lp, VOCAB, None, 1.5, 0.0, beam) == expected


def spell(text: str, vocab=VOCAB, frames_per_char: int = 3, confusions: dict | None = None) -> np.ndarray:
    """Peaky CTC posteriors spelling `text`: each character peaks for one frame between blanks;
    `confusions` {position: (other char, p_other)} splits that character's frame with another."""
    confusions = confusions or {}
    rows = []
    for i, ch in enumerate(text):
        row = np.full(len(vocab), 1e-4)
        if i in confusions:
            other, p_other = confusions[i]
            row[vocab.index(other)] = p_other
            row[vocab.index(ch)] = 0.999 - p_other
        else:
            row[vocab.index(ch)] = 0.99
        rows.append(row)
        for _ in range(frames_per_char - 1):
            blank = np.full(len(vocab), 1e-4)
            blank[0] = 0.99
            rows.append(blank)
    probs = np.array(rows)
    return np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def text_of(ids: list[int], vocab=VOCAB) -> str:
    return "".join(vocab[i] for i in ids)


def test_lm_resolves_an_acoustic_confusion(char_lm):
    # The acoustics slightly prefer 工 (0.52 vs 0.479) where the text says 公.
    lp = spell("我们去公园", confusions={3: ("工", 0.52)})
    plain = ctc_prefix_beam_search(lp, 10)
    assert text_of(plain[0][0]) == "我们去工园"
    fused = ctc_beam_search_with_lm(lp, VOCAB, char_lm, alpha=1.0, beta=0.5, beam_size=10)
    assert text_of(fused[0][0]) == "我们去公园"
    assert text_of(fused[1][0]) == "我们去工园"
    # PaddleSpeech's AISHELL weights with its pruning settings decide the same way.
    ps = ctc_beam_search_with_lm(lp, VOCAB, char_lm, 2.2, 4.3, 500, cutoff_prob=0.99, cutoff_top_n=40)
    assert text_of(ps[0][0]) == "我们去公园"


def test_fused_score_is_ctc_plus_weighted_lm_plus_length(char_lm):
    """With a beam wide enough to keep every prefix, the CTC part is exact and the returned score
    decomposes as log P_ctc + alpha * sum log10 P_lm + beta * length (+ alpha * log10 P(</s>))."""
    rng = np.random.default_rng(1)
    vocab = ["<blank>", "今", "天", "好"]
    lp = log_softmax(rng.normal(size=(4, 4)) * 2)
    exact = dict((tuple(p), s) for p, s in ctc_prefix_beam_search(lp, 1000))
    alpha, beta = 0.7, 0.3
    for eos in (False, True):
        nbest = ctc_beam_search_with_lm(lp, vocab, char_lm, alpha, beta, 1000, score_eos=eos)
        assert len(nbest) == len(exact)
        for ids, score in nbest:
            words = [vocab[i] for i in ids]
            lm_part = sum(sentence_log10(char_lm, words, eos=eos))
            assert score == pytest.approx(exact[tuple(ids)] + alpha * lm_part + beta * len(ids), abs=1e-9)
        assert [s for _, s in nbest] == sorted((s for _, s in nbest), reverse=True)


def test_cutoff_prob_prunes_per_frame_candidates(char_lm):
    # 0.6 + 0.32 clears 0.9 by more than the rounding of log and exp (0.6 + 0.3 sat on the boundary).
    top = np.log(np.array([[0.6, 0.32, 0.04, 0.04], [0.995, 0.004, 0.0005, 0.0005], [0.25, 0.25, 0.25, 0.25]]))
    assert _candidates_per_frame(top, 1.0) == [4, 4, 4]
    assert _candidates_per_frame(top, 0.9) == [2, 1, 4]
    assert _candidates_per_frame(top, 0.99) == [4, 1, 4]
    lp = spell("今天天气很好")
    full = ctc_beam_search_with_lm(lp, VOCAB, char_lm, 1.0, 1.0, 10, cutoff_top_n=len(VOCAB))
    pruned = ctc_beam_search_with_lm(lp, VOCAB, char_lm, 1.0, 1.0, 10, cutoff_prob=0.99, cutoff_top_n=40)
    assert text_of(full[0][0]) == text_of(pruned[0][0]) == "今天天气很好"
    with pytest.raises(ValueError, match="cutoff_prob"):
        ctc_beam_search_with_lm(lp, VOCAB, char_lm, 1.0, 1.0, 10, cutoff_prob=0.0)
    with pytest.raises(ValueError, match="vocab"):
        ctc_beam_search_with_lm(lp, VOCAB[:-1], char_lm, 1.0, 1.0, 10)


def test_batch_matches_single(char_lm):
    rng = np.random.default_rng(2)
    lp = log_softmax(rng.normal(size=(3, 9, len(VOCAB))) * 2).astype(np.float32)
    lengths = np.array([9, 4, 0])
    got = ctc_beam_search_with_lm_batch(lp, lengths, VOCAB, char_lm, alpha=0.8, beta=0.2, beam_size=5)
    assert got == [ctc_beam_search_with_lm(lp[b, :n], VOCAB, char_lm, 0.8, 0.2, 5) for b, n in enumerate(lengths)]
    assert got[2] == [([], 0.0)]
    zero = ctc_beam_search_with_lm_batch(lp, lengths, VOCAB, char_lm, alpha=0.0, beta=0.0, beam_size=5)
    assert zero == ctc_prefix_beam_search_batch(lp, lengths, 5)


def test_kenlm_backend_decodes_identically(tmp_path, char_lm):
    import kenlm  # the KenLM backend is a requirement (requirements.txt), not optional

    assert kenlm.Model
    write_arpa(char_lm.model, tmp_path / "lm.arpa")
    kl = load_language_model(tmp_path / "lm.arpa", backend="kenlm")
    lp = spell("我们去公园", confusions={3: ("工", 0.52)})
    a = ctc_beam_search_with_lm(lp, VOCAB, char_lm, 1.0, 0.5, 10)
    b = ctc_beam_search_with_lm(lp, VOCAB, kl, 1.0, 0.5, 10)
    assert [ids for ids, _ in a] == [ids for ids, _ in b]
    assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)
