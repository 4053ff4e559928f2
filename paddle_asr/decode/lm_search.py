"""CTC prefix beam search with an n-gram LM by shallow fusion: DeepSpeech2's ``ctc_beam_search``.

A prefix (a label sequence after CTC collapsing) is ranked by

    log P_ctc(prefix | x) + alpha * log10 P_lm(prefix) + beta * len(prefix)

which is what PaddleSpeech's decoder (``third_party/ctc_decoders``, ``ctc_beam_search_decoder`` with
a character-based ``Scorer``) ranks by: every emitted character is an LM word, the LM term is KenLM's
log10 probability unconverted, and ``beta`` rewards each character to offset the LM's preference
for short outputs. So the published settings carry over (AISHELL: alpha 2.2, beta 4.3, beam 500,
cutoff_prob 0.99, cutoff_top_n 40). Like PaddleSpeech we score no ``</s>`` by default;
``score_eos`` adds it to the final ranking.

Why our own search rather than pyctcdecode: pyctcdecode applies its LM only at word boundaries
(a space, or a BPE ``▁``), so a Mandarin character vocabulary would be scored as one long word,
and its beams (separate entries for blank- and non-blank-ending paths, pruned by a fixed log-prob
margin) do not reproduce our PaddleSpeech-exact ``ctc_prefix_beam_search``. Here the CTC part is
that search decision for decision, and the LM only adds a per-prefix bonus: with ``alpha = beta = 0``
(and the default cutoffs) the n-best is identical, scores included.

Mathematically the bonus could be folded into the blank/non-blank path scores, as PaddleSpeech's
trie does; since every path of a prefix shares the same bonus, adding it at ranking time is the same
ranking and keeps the CTC scores free of LM terms. Two PaddleSpeech details are deliberately not
copied: with a full beam it skips extensions scoring below the worst prefix + log P(blank) - beta (a
speed heuristic that can change results), and it scores a word the LM lacks at a flat -1000 (here
it is the LM's ``<unk>`` probability unless the scorer was given ``oov_log10=-1000``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence

import numpy as np

from paddle_asr.decode.search import _log_add2, _paddle_topk, ctc_prefix_step
from paddle_asr.lm.scorer import LanguageModel

_NEG_INF = -math.inf

# (LM state, token id) -> (log10 P(token | state), next state); shareable across utterances.
LMCache = dict[tuple[Hashable, int], tuple[float, Hashable]]


def _candidates_per_frame(top_vals: np.ndarray, cutoff_prob: float) -> list[int]:
    """How many of each frame's best tokens to expand: the fewest whose probabilities reach
    `cutoff_prob` (PaddleSpeech's ``get_pruned_log_probs``), all of them when it is 1."""
    num_frames, width = top_vals.shape
    if cutoff_prob >= 1.0:
        return [width] * num_frames
    cum = np.cumsum(np.exp(top_vals.astype(np.float64)), axis=1)
    reached = cum >= cutoff_prob
    # First position where the mass is reached (inclusive); frames that never reach it keep all.
    first = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, width)
    return first.tolist()


class _PrefixBonus:
    """The LM-and-length bonus of a prefix, ``alpha * log10 P_lm(prefix) + beta * len(prefix)``,
    computed incrementally with the LM state it ends in; `cache` memoises the LM look-ups."""

    def __init__(self, lm: LanguageModel | None, words: list[str], alpha: float, beta: float, cache: LMCache) -> None:
        self.use_lm = lm is not None and alpha != 0.0
        self.lm, self.words, self.alpha, self.beta, self.cache = lm, words, alpha, beta, cache

    def begin(self) -> tuple[float, Hashable]:
        return 0.0, self.lm.begin_state() if self.use_lm else None

    def extend(self, parent: tuple[float, Hashable], token: int) -> tuple[float, Hashable]:
        """The (bonus, LM state) of a prefix extended by `token`, from its parent's."""
        bonus, state = parent
        if not self.use_lm:
            return bonus + self.beta, state
        key = (state, token)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self.lm.score(state, self.words[token])
        return bonus + (self.alpha * hit[0] + self.beta), hit[1]

    def end(self, state: Hashable) -> float:
        """What ``</s>`` adds to the score of a finished prefix ending in `state`."""
        return self.alpha * self.lm.end_score(state)


def _checked_top_n(log_probs: np.ndarray, vocab: Sequence[str], beam_size: int, cutoff_prob: float,
                   cutoff_top_n: int | None) -> int:
    """Validate the arguments; returns how many tokens per frame to consider at most."""
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must be [T, V], got shape {log_probs.shape}")
    vocab_size = log_probs.shape[1]
    if len(vocab) != vocab_size:
        raise ValueError(f"vocab has {len(vocab)} entries but log_probs has {vocab_size} columns")
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    if not 0.0 < cutoff_prob <= 1.0:
        raise ValueError("cutoff_prob must be in (0, 1]")
    top_n = min(beam_size if cutoff_top_n is None else cutoff_top_n, vocab_size)
    if top_n < 1:
        raise ValueError("cutoff_top_n must be >= 1")
    return top_n


def _attach_bonus(info: dict, bonus: _PrefixBonus, prefix: tuple[int, ...], token: int,
                  n_prefix: tuple[int, ...]) -> None:
    """`ctc_prefix_step`'s hook: a prefix met for the first time gets its bonus from its parent's."""
    if n_prefix not in info:
        info[n_prefix] = bonus.extend(info[prefix], token)


def ctc_beam_search_with_lm(
    log_probs: np.ndarray,
    vocab: Sequence[str],
    lm: LanguageModel | None,
    alpha: float,
    beta: float,
    beam_size: int,
    blank: int = 0,
    cutoff_prob: float = 1.0,
    cutoff_top_n: int | None = None,
    score_eos: bool = False,
    cache: LMCache | None = None,
) -> list[tuple[list[int], float]]:
    """N-best of CTC prefix beam search with LM fusion for one utterance, best first.

    `log_probs` [T, V] is the CTC log-softmax cut to the valid frames; `vocab` the V unit strings
    (``vocab[i]`` is the LM word emitted by token i; the blank is never scored). `lm` may be None
    (then `alpha` is unused). Per frame the best ``cutoff_top_n`` tokens (default `beam_size`, as the
    U2 prefix search takes) are cut further to those covering `cutoff_prob` of the frame's mass;
    note PaddleSpeech's DS2 decoder ignores ``cutoff_top_n`` when ``cutoff_prob`` is 1.0 (it then
    expands every token), which here means passing ``cutoff_top_n=V``.

    Returns up to `beam_size` ``(token ids, score)``; the score is the fused ranking score above
    (plus ``alpha * log10 P(</s> | prefix)`` with `score_eos`). `cache` (a dict) lets consecutive
    calls with the same `lm` and `vocab` reuse LM look-ups.
    """
    log_probs = np.asarray(log_probs)
    top_n = _checked_top_n(log_probs, vocab, beam_size, cutoff_prob, cutoff_top_n)
    bonus = _PrefixBonus(lm, list(vocab), alpha, beta, {} if cache is None else cache)

    # Per live prefix: (alpha * LM log10 + beta * length, LM state). Scores stay pure CTC.
    info: dict[tuple[int, ...], tuple[float, Hashable]] = {(): bonus.begin()}
    cur_hyps: list[tuple[tuple[int, ...], tuple[float, float]]] = [((), (0.0, _NEG_INF))]
    if len(log_probs):
        top_vals, top_idx = _paddle_topk(log_probs, top_n)
        widths = _candidates_per_frame(top_vals, cutoff_prob)
        top_vals, top_idx = top_vals.tolist(), top_idx.tolist()
    for t in range(len(log_probs)):
        width = widths[t]
        next_hyps = ctc_prefix_step(cur_hyps, top_idx[t][:width], top_vals[t][:width], blank,
                                    on_extend=functools.partial(_attach_bonus, info, bonus))
        cur_hyps = sorted(
            next_hyps.items(), key=lambda x: _log_add2(*x[1]) + info[x[0]][0], reverse=True
        )[:beam_size]
        # Forget the bonuses of pruned prefixes: the table stays the size of the beam's children.
        info = {prefix: info[prefix] for prefix, _ in cur_hyps}

    results = []
    for prefix, (pb, pnb) in cur_hyps:
        prefix_bonus, state = info[prefix]
        score = _log_add2(pb, pnb) + prefix_bonus
        if score_eos and bonus.use_lm:
            score += bonus.end(state)
        results.append((list(prefix), score))
    if score_eos and bonus.use_lm:
        results.sort(key=lambda r: r[1], reverse=True)
    return results


def ctc_beam_search_with_lm_batch(
    log_probs: np.ndarray, lengths: np.ndarray, vocab: Sequence[str], lm: LanguageModel | None, **kwargs
) -> list[list[tuple[list[int], float]]]:
    """:func:`ctc_beam_search_with_lm` per utterance of a padded [B, T, V] batch, each cut to its
    length; one LM cache serves the whole batch."""
    cache: LMCache | None = kwargs.pop("cache", None)
    if cache is None:
        cache = {}
    return [
        ctc_beam_search_with_lm(np.asarray(lp)[: int(n)], vocab, lm, cache=cache, **kwargs)
        for lp, n in zip(log_probs, lengths)
    ]
