"""Interpolated modified Kneser-Ney estimation of an n-gram model (Chen & Goodman 1998), as KenLM's
``lmplz`` does it, written as a back-off ARPA model.

Why these choices:

* **Modified KN** (three discounts per order, for n-grams seen once, twice, three or more times) is
  the standard for ASR n-gram LMs; PaddleSpeech's released LMs are KenLM builds, which use it.
* **Continuation counts** for the lower orders: a lower-order n-gram is only consulted when the
  longer context failed, so its probability should reflect in how many *different* contexts a word
  appears, not how often. N-grams that begin with ``<s>`` keep their raw counts, since nothing can
  precede ``<s>`` (KenLM's "adjusted counts").
* **Interpolation** with the next-lower order at every order, down to a uniform distribution over
  the vocabulary at the bottom, so every word, ``</s>`` and ``<unk>`` included, has a non-zero
  probability after every history and each conditional distribution sums to one.
* The interpolated model is stored exactly in back-off form: the ARPA probability of a seen n-gram
  ``h w`` is the interpolated ``P(w | h)`` and the backoff of ``h`` is its interpolation weight
  ``gamma(h)``, so an unseen ``w`` gets ``gamma(h) * P(w | h')``, the interpolated value.
* Discounts come from the count-of-counts of each order. Tiny corpora can make them undefined (no
  n-gram seen exactly three times, say); then the fixed fallback (0.5, 1.0, 1.5) is used, as
  ``lmplz --discount_fallback`` does, and the result says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from paddle_asr.errors import AsrError
from paddle_asr.lm.arpa import BOS, BOS_LOG10, EOS, UNK, Ngram, NgramModel

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


@dataclass(frozen=True)
class Discounts:
    """Discounts for n-grams whose (adjusted) count is 1, 2 and 3 or more."""

    d1: float
    d2: float
    d3: float
    fallback: bool = False

    def __call__(self, count: int) -> float:
        if count <= 0:
            return 0.0
        return self.d1 if count == 1 else self.d2 if count == 2 else self.d3


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter[Ngram]]:
    """Raw counts of every n-gram, n = 1..order, in ``<s> w1 .. wk </s>`` (one ``<s>``, as KenLM pads)."""
    if order < 1:
        raise ValueError("order must be >= 1")
    counts: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    for words in sentences:
        tokens = (BOS, *words, EOS)
        for n in range(1, order + 1):
            table = counts[n - 1]
            for i in range(len(tokens) - n + 1):
                table[tokens[i : i + n]] += 1
    return counts


def adjust_counts(counts: list[Counter[Ngram]]) -> list[dict[Ngram, int]]:
    """Kneser-Ney counts: raw at the top order and for n-grams starting with ``<s>``; otherwise the
    number of distinct words seen immediately before the n-gram."""
    order = len(counts)
    adjusted: list[dict[Ngram, int]] = [dict() for _ in range(order)]
    adjusted[-1] = dict(counts[-1])
    for n in range(order - 1, 0, -1):  # n-grams of length n, from their (n+1)-gram extensions
        left_extensions: Counter[Ngram] = Counter(gram[1:] for gram in counts[n])
        adjusted[n - 1] = {
            gram: raw if gram[0] == BOS else left_extensions[gram] for gram, raw in counts[n - 1].items()
        }
    return adjusted


def estimate_discounts(adjusted: dict[Ngram, int]) -> Discounts:
    """Chen & Goodman's estimates from the count-of-counts t1..t4 (or the fallback if undefined)."""
    t = Counter(min(c, 5) for gram, c in adjusted.items() if gram != (BOS,))
    t1, t2, t3, t4 = (t[k] for k in (1, 2, 3, 4))
    if min(t1, t2, t3, t4) > 0:
        y = t1 / (t1 + 2 * t2)
        d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
        if all(0 < dk < k for k, dk in enumerate(d, 1)):
            return Discounts(*d)
    return Discounts(*FALLBACK_DISCOUNTS, fallback=True)


@dataclass
class BuildReport:
    """What the estimation used; printed by the build tool."""

    order: int
    sentences: int
    tokens: int
    vocabulary: int
    ngram_counts: list[int]
    discounts: list[Discounts]


def build_kneser_ney(
    sentences: Iterable[Sequence[str]],
    order: int,
    vocabulary: Iterable[str] = (),
    discounts: Sequence[Discounts] | None = None,
) -> tuple[NgramModel, BuildReport]:
    """Estimate an interpolated modified Kneser-Ney model of `order` from tokenised sentences.

    `vocabulary` adds words that the model must know even if the text never uses them (for example
    every unit the acoustic model can emit): they get the uniform share of the unigram mass, as
    ``<unk>`` does, instead of being mapped to ``<unk>``. `discounts` (one per order) replaces the
    estimated ones, to reproduce a model built elsewhere.

    Versus KenLM's ``lmplz`` on the same text: the same n-grams, probabilities and backoffs (to the
    7 decimals it writes) given the same discounts; ``<s>`` is written as -99 where lmplz writes 0
    (never used: ``<s>`` is not predicted); and lmplz's discounts can differ slightly because it
    files the last n-gram of each lower order under its raw count instead of its adjusted count
    when it collects count-of-counts (``adjust_counts.cc``, final flush); here every n-gram counts
    with its adjusted count, as Chen & Goodman define it.
    """
    sentences = [list(s) for s in sentences]
    _check_words(sentences)
    counts = count_ngrams(sentences, order)
    adjusted = adjust_counts(counts)
    if discounts is None:
        discounts = [estimate_discounts(a) for a in adjusted]
    elif len(discounts) != order:
        raise ValueError(f"{len(discounts)} discounts given for an order-{order} model")
    discounts = list(discounts)
    probs: list[dict[Ngram, float]] = [dict() for _ in range(order)]
    gammas: list[dict[Ngram, float]] = [dict() for _ in range(order)]  # context (length n) -> weight
    probs[0], predictable = _unigram_probs(adjusted[0], discounts[0], vocabulary)
    for n in range(2, order + 1):
        probs[n - 1], gammas[n - 2] = _interpolated_probs(adjusted[n - 1], discounts[n - 1], probs[n - 2])
    model = NgramModel(order, _log10_entries(probs, gammas))
    report = BuildReport(
        order=order,
        sentences=len(sentences),
        tokens=sum(len(s) + 1 for s in sentences),  # words and </s>
        vocabulary=len(predictable),
        ngram_counts=model.counts(),
        discounts=discounts,
    )
    return model, report


def _check_words(sentences: list[list[str]]) -> None:
    if not sentences:
        raise AsrError("no sentences to build a language model from")
    for s in sentences:
        for w in s:
            if w in (BOS, EOS) or not w or any(c.isspace() for c in w):
                raise AsrError(f"LM words may not be empty, contain whitespace or be {BOS}/{EOS}: {w!r}")


def _unigram_probs(uni: dict[Ngram, int], d: Discounts,
                   vocabulary: Iterable[str]) -> tuple[dict[Ngram, float], set[str]]:
    """Unigrams: discounted continuation counts, interpolated with the uniform distribution over
    every word that can be predicted (all but <s>, with </s> and <unk>); returns them and those words."""
    predictable = {g[0] for g in uni if g[0] != BOS} | {UNK, *vocabulary}
    predictable.discard(BOS)
    total = sum(c for g, c in uni.items() if g[0] != BOS)
    gamma0 = sum(d(c) for g, c in uni.items() if g[0] != BOS) / total
    uniform = gamma0 / len(predictable)
    probs = {}
    for w in predictable:
        c = uni.get((w,), 0)
        probs[(w,)] = (c - d(c)) / total + uniform
    return probs, predictable


def _interpolated_probs(table: dict[Ngram, int], d: Discounts,
                        lower: dict[Ngram, float]) -> tuple[dict[Ngram, float], dict[Ngram, float]]:
    """The probabilities of one order's n-grams, interpolated with the order below, and the
    interpolation weight of each context."""
    # Per context: total count, and the summed discounts that become its interpolation weight.
    context_total: dict[Ngram, int] = {}
    context_discount: dict[Ngram, float] = {}
    for gram, c in table.items():
        h = gram[:-1]
        context_total[h] = context_total.get(h, 0) + c
        context_discount[h] = context_discount.get(h, 0.0) + d(c)
    gamma = {h: context_discount[h] / context_total[h] for h in context_total}
    current = {}
    for gram, c in table.items():
        h = gram[:-1]
        current[gram] = (c - d(c)) / context_total[h] + gamma[h] * lower[gram[1:]]
    return current, gamma


def _log10_entries(probs: list[dict[Ngram, float]],
                   gammas: list[dict[Ngram, float]]) -> list[dict[Ngram, tuple[float, float]]]:
    """Per order, each n-gram's (log10 probability, log10 backoff weight), as ARPA lists them."""
    order = len(probs)
    ngrams: list[dict[Ngram, tuple[float, float]]] = []
    for n in range(1, order + 1):
        gamma = gammas[n - 1] if n < order else {}
        entries = {gram: (math.log10(p), math.log10(gamma[gram]) if gram in gamma else 0.0)
                   for gram, p in probs[n - 1].items()}
        if n == 1:
            # <s> is a context only: it gets the conventional "never predicted" probability.
            bos_gamma = gamma.get((BOS,))
            entries[(BOS,)] = (BOS_LOG10, math.log10(bos_gamma) if bos_gamma else 0.0)
        ngrams.append(entries)
    return ngrams
