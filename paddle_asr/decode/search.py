"""U2 searches in NumPy: CTC greedy, CTC prefix beam, attention beam, attention rescoring.

The searches reproduce PaddleSpeech 1.5.0 (``paddlespeech/s2t/models/u2/u2.py``: ``ctc_greedy_search``,
``_ctc_prefix_beam_search``, ``recognize``, ``attention_rescoring``) decision for decision, so that our
hypotheses can be compared with PaddleSpeech's golden output token for token. Nothing here runs a
network: the caller supplies CTC log-posteriors, a decoder step function, or decoder log-probs.

Fidelity details that matter, and why they are implemented the way they are:

* ``paddle.topk`` on CPU does not order ties by index. Its kernel (``phi/kernels/cpu/top_k_kernel.cc``)
  runs libstdc++ ``std::partial_sort`` when ``64 * k < width`` and otherwise ``std::nth_element`` followed
  by ``std::sort`` of the first ``k - 1`` entries, both unstable. :func:`_paddle_topk` takes the fast
  vectorised route whenever the answer is unique (no equal values inside the top-k or at its
  boundary) and otherwise replays those libstdc++ algorithms step by step, so even ties (including the
  ``-inf`` ties of the attention search) come out in PaddleSpeech's order.
* ``log_add`` is PaddleSpeech's ``paddlespeech.s2t.utils.utility.log_add`` operation for operation
  (``max`` + ``log(sum(exp(a - max)))``, not ``log1p``): the n-best is sorted on these floats with a
  stable sort, so a last-bit difference could swap near-equal hypotheses.
* Attention beam scores are accumulated in float32, as PaddleSpeech's ``scores`` tensor is.
* PaddleSpeech's ``recognize`` never reorders its incremental decoder cache after beam re-selection;
  see :func:`attention_beam_search` for what a step function must do to reproduce that.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from paddle_asr.decode import compiled_search
from paddle_asr.decode.context_graph import ContextGraph, ContextState

_NEG_INF = -math.inf

_NAN_SCORES = "NaN in scores; paddle.topk would rank it above everything"

# libstdc++'s std::sort switches to insertion sort below this many elements (_S_threshold).
_SORT_THRESHOLD = 16


def ctc_greedy_search(log_probs: np.ndarray, lengths: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Best token per frame, repeats merged, blanks removed; `log_probs` is [B, T, V]."""
    best = log_probs.argmax(axis=-1)
    hyps = []
    for row, n in zip(best, lengths):
        row = row[: int(n)]
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        hyps.append([int(t) for t in row[keep] if t != blank])
    return hyps


# --------------------------------------------------------------------------------------------------
# log_add, exactly as PaddleSpeech computes it


def _log_add(args: Sequence[float]) -> float:
    """PaddleSpeech's ``utility.log_add``; the specialised versions below must agree with it bit for bit."""
    if all(a == _NEG_INF for a in args):
        return _NEG_INF
    a_max = max(args)
    return a_max + math.log(sum(math.exp(a - a_max) for a in args))


def _log_add2(a: float, b: float) -> float:
    """``_log_add([a, b])`` without building a list; same operations in the same order."""
    if a == _NEG_INF and b == _NEG_INF:
        return _NEG_INF
    m = max(a, b)
    return m + math.log(sum((math.exp(a - m), math.exp(b - m))))


def _log_add3(a: float, b: float, c: float) -> float:
    """``_log_add([a, b, c])``; ``sum`` over a tuple adds exactly like ``sum`` over PaddleSpeech's generator."""
    if a == _NEG_INF and b == _NEG_INF and c == _NEG_INF:
        return _NEG_INF
    m = max(a, b, c)
    return m + math.log(sum((math.exp(a - m), math.exp(b - m), math.exp(c - m))))


# --------------------------------------------------------------------------------------------------
# paddle.topk (CPU) emulation. Elements are (value, index) pairs; the comparator is Paddle's
# ``l.first > r.first`` (NaN is rejected before we get here). Each helper mirrors the libstdc++
# function of the same name (bits/stl_algo.h, bits/stl_heap.h) on half-open index ranges.


def _push_heap(a: list, first: int, hole: int, top: int, value: tuple) -> None:
    parent = (hole - 1) // 2
    while hole > top and a[first + parent][0] > value[0]:
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value


def _adjust_heap(a: list, first: int, hole: int, length: int, value: tuple) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if a[first + child][0] > a[first + child - 1][0]:
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if (length & 1) == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    _push_heap(a, first, hole, top, value)


def _make_heap(a: list, first: int, last: int) -> None:
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(a, first, parent, length, a[first + parent])
        if parent == 0:
            return
        parent -= 1


def _pop_heap(a: list, first: int, last: int, result: int) -> None:
    value = a[result]
    a[result] = a[first]
    _adjust_heap(a, first, 0, last - first, value)


def _heap_select(a: list, first: int, middle: int, last: int) -> None:
    _make_heap(a, first, middle)
    top = a[first]  # refreshed whenever the heap changes
    for i in range(middle, last):
        if a[i][0] > top[0]:
            _pop_heap(a, first, middle, i)
            top = a[first]


def _sort_heap(a: list, first: int, last: int) -> None:
    while last - first > 1:
        last -= 1
        _pop_heap(a, first, last, last)


def _partial_sort(a: list, first: int, middle: int, last: int) -> None:
    _heap_select(a, first, middle, last)
    _sort_heap(a, first, middle)


def _move_median_to_first(a: list, result: int, x: int, y: int, z: int) -> None:
    ax, ay, az = a[x][0], a[y][0], a[z][0]
    if ax > ay:
        if ay > az:
            pick = y
        elif ax > az:
            pick = z
        else:
            pick = x
    elif ax > az:
        pick = x
    elif ay > az:
        pick = z
    else:
        pick = y
    a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a: list, first: int, last: int, pivot: int) -> int:
    pv = a[pivot][0]
    while True:
        while a[first][0] > pv:
            first += 1
        last -= 1
        while pv > a[last][0]:
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


def _unguarded_partition_pivot(a: list, first: int, last: int) -> int:
    mid = first + (last - first) // 2
    _move_median_to_first(a, first, first + 1, mid, last - 1)
    return _unguarded_partition(a, first + 1, last, first)


def _insertion_sort(a: list, first: int, last: int) -> None:
    # libstdc++'s (guarded or unguarded) insertion sort is a stable sort of the current arrangement.
    a[first:last] = sorted(a[first:last], key=lambda p: p[0], reverse=True)


def _introselect(a: list, first: int, nth: int, last: int, depth_limit: int) -> None:
    while last - first > 3:
        if depth_limit == 0:
            _heap_select(a, first, nth + 1, last)
            a[first], a[nth] = a[nth], a[first]
            return
        depth_limit -= 1
        cut = _unguarded_partition_pivot(a, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(a, first, last)


def _introsort_loop(a: list, first: int, last: int, depth_limit: int) -> None:
    while last - first > _SORT_THRESHOLD:
        if depth_limit == 0:
            _partial_sort(a, first, last, last)
            return
        depth_limit -= 1
        cut = _unguarded_partition_pivot(a, first, last)
        _introsort_loop(a, cut, last, depth_limit)
        last = cut


def _std_sort(a: list, first: int, last: int) -> None:
    if last - first > 1:
        _introsort_loop(a, first, last, 2 * ((last - first).bit_length() - 1))
        _insertion_sort(a, first, last)


def _paddle_topk_row(row: np.ndarray, k: int) -> tuple[list, list]:
    """One row of Paddle's CPU ``FullTopK`` (largest=True, sorted=True), ties included."""
    width = len(row)
    a = list(zip(row.tolist(), range(width)))
    if k * 64 < width:
        _partial_sort(a, 0, k, width)
    else:
        _introselect(a, 0, k - 1, width, 2 * (width.bit_length() - 1))
        _std_sort(a, 0, k - 1)
    return [p[0] for p in a[:k]], [p[1] for p in a[:k]]


def _paddle_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``paddle.topk(x, k)`` on CPU along the last axis of a 2-D array: (values [R, k], int64 indices [R, k]).

    Without ties the answer is unique, so NumPy computes it; rows with equal values inside the top-k
    or at its boundary are handed to the libstdc++ replay, which picks the same tied entries, in the
    same order, as Paddle does.
    """
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {x.shape}")
    rows, width = x.shape
    if not 1 <= k <= width:
        raise ValueError(f"k={k} must be in [1, {width}]")
    if np.isnan(x).any():
        raise ValueError(_NAN_SCORES)
    if k == width:
        cand = np.broadcast_to(np.arange(width), x.shape)
    else:
        cand = np.argpartition(-x, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(x, cand, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1)
    tied = (vals[:, 1:] == vals[:, :-1]).any(axis=1)
    if k < width:
        tied |= (x == vals[:, -1:]).sum(axis=1) > 1
    for r in np.flatnonzero(tied):
        v, i = _paddle_topk_row(x[r], k)
        vals[r] = v
        idx[r] = i
    return vals, idx


def _paddle_argmax(x: np.ndarray) -> np.ndarray:
    """``paddle.argmax(x, axis=-1)`` on CPU: the first maximum, as ``np.argmax`` (checked in tests)."""
    return np.argmax(x, axis=-1)


# --------------------------------------------------------------------------------------------------
# CTC prefix beam search


def ctc_prefix_beam_search(log_probs: np.ndarray, beam_size: int, blank: int = 0,
                           context: ContextGraph | None = None) -> list[tuple[list[int], float]]:
    """PaddleSpeech's ``U2BaseModel._ctc_prefix_beam_search`` for one utterance.

    `log_probs` is the CTC log-softmax [T, V] cut to the utterance's valid frames. Pass it in the
    dtype the network produced (float32 for PaddleSpeech): each frame's top-`beam_size` tokens are
    chosen on those values, then added as Python floats, exactly as ``logp[s].item()`` does.

    Per frame: candidates are ``paddle.topk(logp, beam_size)`` in Paddle's order (which fixes the
    insertion order of new prefixes, and so who wins exact score ties); (pb, pnb) are updated with
    PaddleSpeech's ``log_add`` in its argument order; prefixes are sorted on ``log_add(pb, pnb)`` with
    Python's stable ``sorted(..., reverse=True)`` and the first `beam_size` kept.

    Returns up to `beam_size` (tokens, log_add(pb, pnb)) pairs, best first; fewer only when fewer
    prefixes exist. As in PaddleSpeech (whose defaultdict read inserts the key), a repeat extension of
    a prefix with no blank-ending mass is entered with score ``-inf``, so such impossible prefixes can
    fill the tail of the n-best when few real ones exist. ``beam_size > V`` (which PaddleSpeech's topk
    would reject) uses all V tokens per frame.

    With a `context` graph (hotwords, `decode.context_graph`) prefixes are ranked by that score plus
    their context bonus, and the n-best scores include the bonus of the phrases they complete (see
    `CtcPrefixBeam`). Without one the search is PaddleSpeech's, unchanged.
    """
    beam = CtcPrefixBeam(beam_size, blank, context)
    beam.advance(log_probs)
    return beam.nbest()


class CtcPrefixBeam:
    """:func:`ctc_prefix_beam_search` fed frame block by frame block, as a streaming decoder needs:
    `advance` with each chunk's CTC log-probs [t, V]; `nbest()` at any point equals the whole search
    over every frame advanced so far (each frame's top-k and recursion only read that frame).

    With a `context` graph each prefix carries its graph state and bonus (WeNet's contextual
    biasing): prefixes are ranked by log_add(pb, pnb) + bonus, and `nbest()` returns the scores with
    the bonus of open partial matches refunded (`ContextGraph.finish`), re-sorted on them. The
    pruning of `_beam_floor` bounds CTC scores only, so a biased search expands every candidate.

    Without a context graph, float32 log-probs go to the compiled search (`compiled_search`,
    ctc_prefix_beam.cc: these operations in C++, the same beam bit for bit) where it could be built."""

    def __init__(self, beam_size: int, blank: int = 0, context: ContextGraph | None = None) -> None:
        if beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        self.beam_size, self.blank, self.context = beam_size, blank, context
        self._hyps: list[tuple[tuple[int, ...], tuple[float, float]]] = [((), (0.0, _NEG_INF))]
        # The unbiased search runs compiled where it could be built (the same beam, bit for bit).
        beams = compiled_search.get() if context is None else None
        self._compiled = compiled_search.CompiledBeam(beams, beam_size, blank) if beams is not None else None
        # Per prefix of the beam: (context bonus, context state); a function of the prefix alone.
        self.bias: dict[tuple[int, ...], tuple[float, ContextState]] = {} if context is None else {
            (): (0.0, context.root)}
        self.frames = 0

    def advance(self, log_probs: np.ndarray) -> None:
        log_probs = np.asarray(log_probs)
        if log_probs.ndim != 2:
            raise ValueError(f"log_probs must be [T, V], got shape {log_probs.shape}")
        if not log_probs.shape[0]:
            return
        if self._compiled is not None:
            if log_probs.dtype == np.float32 and log_probs.shape[1]:  # no units: the Python search's error
                if np.isnan(log_probs).any():
                    raise ValueError(_NAN_SCORES)
                self._compiled.advance(log_probs)
                self.frames += log_probs.shape[0]
                return
            self._hyps, self._compiled = self.hyps, None  # scores of another dtype: Python from here on
        top_vals, top_idx = _paddle_topk(log_probs, min(self.beam_size, log_probs.shape[1]))
        cur_hyps = self._hyps
        for tokens, values in zip(top_idx.tolist(), top_vals.tolist()):
            if self.context is not None:
                cur_hyps = self._biased_frame(cur_hyps, tokens, values)
                continue
            prune = _beam_floor(cur_hyps, tokens, values, self.blank, self.beam_size)
            next_hyps = ctc_prefix_step(cur_hyps, tokens, values, self.blank, prune=prune)
            cur_hyps = sorted(next_hyps.items(), key=lambda x: _log_add2(*x[1]), reverse=True)[: self.beam_size]
        self._hyps = cur_hyps
        self.frames += log_probs.shape[0]

    @property
    def hyps(self) -> list[tuple[tuple[int, ...], tuple[float, float]]]:
        """The beam: (prefix, (pb, pnb)) pairs, best first."""
        return self._compiled.hyps() if self._compiled is not None else self._hyps

    def _biased_frame(self, cur_hyps: list[tuple[tuple[int, ...], tuple[float, float]]], tokens: list[int],
                      values: list[float]) -> list[tuple[tuple[int, ...], tuple[float, float]]]:
        """One frame of the search with context bonuses: the beam after it, bonuses of new prefixes
        stepped from their parents', the table cut to the beam."""
        bias, graph = self.bias, self.context

        def attach(prefix: tuple[int, ...], token: int, n_prefix: tuple[int, ...]) -> None:
            if n_prefix not in bias:
                bonus, state = bias[prefix]
                change, n_state = graph.step(state, token)
                bias[n_prefix] = (bonus + change, n_state)

        next_hyps = ctc_prefix_step(cur_hyps, tokens, values, self.blank, on_extend=attach)
        cur_hyps = sorted(next_hyps.items(), key=lambda x: _log_add2(*x[1]) + bias[x[0]][0],
                          reverse=True)[: self.beam_size]
        self.bias = {prefix: bias[prefix] for prefix, _ in cur_hyps}
        return cur_hyps

    def best(self) -> list[int]:
        """The best prefix so far (a streaming partial result)."""
        if self._compiled is not None:
            return list(self._compiled.hyp(0)[0])
        return list(self._hyps[0][0])

    def nbest(self) -> list[tuple[list[int], float]]:
        """Up to beam_size (tokens, log_add(pb, pnb)) pairs, best first; with a context graph the
        score adds the prefix's bonus, its open partial match refunded."""
        if self.context is None:
            return [(list(prefix), _log_add2(pb, pnb)) for prefix, (pb, pnb) in self.hyps]
        finished = []
        for prefix, (pb, pnb) in self.hyps:
            bonus, state = self.bias[prefix]
            finished.append((list(prefix), _log_add2(pb, pnb) + bonus + self.context.finish(state)))
        return sorted(finished, key=lambda x: x[1], reverse=True)


# Above log(2) plus rounding: log_add(a, b) <= max(a, b) + log(2).
_LOG2_BOUND = 0.75


@dataclass(frozen=True)
class BeamFloor:
    """What lets one frame of the prefix recursion skip new prefixes that cannot enter the beam
    (`_beam_floor`): `floor` <= the beam_size-th best score after the frame; `bounds[i]` + a token's
    log-prob bounds the score of cur_hyps[i] extended by that token into a new prefix; `extends`:
    the (i, token) pairs whose extension is itself in the beam (scored as before, never skipped)."""
    floor: float
    bounds: list[float]
    extends: set[tuple[int, int]]


def _beam_floor(cur_hyps, tokens: Sequence[int], values: Sequence[float], blank: int, beam_size: int
                ) -> BeamFloor | None:
    """The frame's `BeamFloor`, or None when nothing can be skipped. log_add never returns less than
    its largest argument, so a prefix of the beam scores at least max(pb, pnb) + P(blank) after the
    frame, and a new prefix, cur_hyps[i] extended by a token t, scores at least max(pb, pnb) + P(t)
    and at most that + log 2 (the only way to reach it). The beam_size-th largest lower bound is the
    floor: a new prefix whose upper bound is below it would be sorted after beam_size others and cut,
    so skipping it leaves every kept prefix's score, and their order, as the full recursion gives them."""
    bases = [max(pb, pnb) for _, (pb, pnb) in cur_hyps]
    lasts = [prefix[-1] if prefix else None for prefix, _ in cur_hyps]
    index = {prefix: i for i, (prefix, _) in enumerate(cur_hyps)}
    extends = {(index[prefix[:-1]], prefix[-1]) for prefix, _ in cur_hyps if prefix and prefix[:-1] in index}
    lower: list[float] = []
    for s, ps in zip(tokens, values):
        if s == blank:
            lower += [b + ps for b in bases]
        else:
            lower += [b + ps for i, b in enumerate(bases) if lasts[i] != s and (i, s) not in extends]
    if len(lower) < beam_size:
        return None
    floor = heapq.nlargest(beam_size, lower)[-1]
    if floor == _NEG_INF:
        return None
    return BeamFloor(floor, [b + _LOG2_BOUND for b in bases], extends)


def ctc_prefix_step(cur_hyps: list[tuple[tuple[int, ...], tuple[float, float]]], tokens: Sequence[int],
                    values: Sequence[float], blank: int,
                    on_extend: Callable[[tuple[int, ...], int, tuple[int, ...]], None] | None = None,
                    prune: BeamFloor | None = None) -> dict[tuple[int, ...], tuple[float, float]]:
    """One frame of the CTC prefix recursion: the (blank-ending, non-blank-ending) log scores of every
    prefix the beam `cur_hyps` reaches with the frame's candidate `tokens` (log-probs `values`).

    Written once for every prefix search: `on_extend(prefix, token, new_prefix)` is called before each
    non-blank extension is scored, so a search that carries state per prefix (an LM, a context graph)
    attaches it there without a copy of the recursion. With `prune` (`_beam_floor`), new prefixes
    that cannot enter the next beam are left out: the beam the caller keeps is unchanged.
    """
    # Plain dict with get-then-set: same insertion order as PaddleSpeech's defaultdict reads.
    next_hyps: dict[tuple[int, ...], tuple[float, float]] = {}
    empty = (_NEG_INF, _NEG_INF)
    for s, ps in zip(tokens, values):
        for i, (prefix, (pb, pnb)) in enumerate(cur_hyps):
            last = prefix[-1] if prefix else None
            if s == blank:
                n_pb, n_pnb = next_hyps.get(prefix, empty)
                next_hyps[prefix] = (_log_add3(n_pb, pb + ps, pnb + ps), n_pnb)
                continue
            if (prune is not None and s != last and prune.bounds[i] + ps < prune.floor
                    and (i, s) not in prune.extends):
                continue
            n_prefix = prefix + (s,)
            if on_extend is not None:
                on_extend(prefix, s, n_prefix)
            if s == last:
                # *ss -> *s (repeat collapses), and *s-s -> *ss (a blank separated the repeat)
                n_pb, n_pnb = next_hyps.get(prefix, empty)
                next_hyps[prefix] = (n_pb, _log_add2(n_pnb, pnb + ps))
                n_pb, n_pnb = next_hyps.get(n_prefix, empty)
                next_hyps[n_prefix] = (n_pb, _log_add2(n_pnb, pb + ps))
            else:
                n_pb, n_pnb = next_hyps.get(n_prefix, empty)
                next_hyps[n_prefix] = (n_pb, _log_add3(n_pnb, pb + ps, pnb + ps))
    return next_hyps


def ctc_prefix_beam_search_batch(
    log_probs: np.ndarray, lengths: np.ndarray, beam_size: int, blank: int = 0, context: ContextGraph | None = None
) -> list[list[tuple[list[int], float]]]:
    """:func:`ctc_prefix_beam_search` per utterance of a padded [B, T, V] batch, each cut to its length.

    PaddleSpeech only runs this search with batch size 1 (no padding), which cutting reproduces.
    """
    return [
        ctc_prefix_beam_search(np.asarray(lp)[: int(n)], beam_size, blank, context)
        for lp, n in zip(log_probs, lengths)
    ]


# --------------------------------------------------------------------------------------------------
# Attention beam search


def attention_beam_search(
    step: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    beam_size: int,
    sos: int,
    eos: int,
    max_len: int | Sequence[int],
    reorder: Callable[[np.ndarray], None] | None = None,
) -> list[tuple[list[int], float]]:
    """PaddleSpeech's ``U2BaseModel.recognize``: batched left-to-right beam search on the attention decoder.

    Step contract: ``step(hyps)`` gets int64 ``hyps`` [batch_size * beam_size, i] at step i = 1, 2, ...:
    row ``b * beam_size + n`` is beam n of utterance b, and each row is the whole prefix so far,
    starting with `sos`. All rows are passed every step, including finished ones and the ``-inf``
    placeholder beams of step 1 (they must still get finite log-probs). It returns the next-token
    log-probabilities [batch_size * beam_size, V] (log-softmax of the decoder's last position, cast
    to float32 here as PaddleSpeech's tensors are). The simplest correct step runs the full
    (non-incremental) decoder over ``hyps`` with a causal mask and takes the last position.

    Caveat on reproducing PaddleSpeech exactly: its ``recognize`` calls ``decoder.forward_one_step``
    with an incremental per-layer cache that it never reorders after beams are re-selected (WeNet
    fixed this in wenet-e2e/wenet#1635, PaddleSpeech 1.5.0 did not). For a decoder with two or more
    layers, rows whose parent beam changed then attend to another hypothesis' cached layer outputs,
    so PaddleSpeech's log-probs differ from a full-prefix decoder's. To reproduce PaddleSpeech, keep
    such a row-ordered cache inside `step` and never reorder it; to get the corrected (WeNet)
    behaviour, reorder the cache in `reorder`, which is called after every step with the int64
    parent-row index [batch_size * beam_size] of each new row (``best_hyps_index``).

    Loop: scores start at [0, -inf, ..., -inf] per utterance; each step takes ``topk(logp, beam_size)``
    per row; finished rows (last token `eos`) keep one candidate with score 0 and token `eos`, the
    rest ``-inf`` (``mask_finished_scores`` / ``mask_finished_preds``); then ``topk`` over the
    beam_size * beam_size (score + candidate) of each utterance. It runs for ``i in range(1,
    max_len + 1)`` and stops earlier once every row ends in `eos`. PaddleSpeech's ``maxlen`` is
    ``encoder_out.shape[1]``, the padded encoder length, shared by the whole batch; given a sequence of
    per-utterance encoder lengths we use its maximum, which is that padded length.

    Returns per utterance the best beam (first maximum, ``paddle.argmax``) as (tokens, float32 score):
    tokens after `sos` up to but excluding the first `eos`, as PaddleSpeech's
    ``TextFeaturizer.defeaturize`` reads them; hypotheses cut by `max_len` keep all their tokens.
    ``beam_size > V`` (PaddleSpeech's topk would reject it) pads each row's candidates with
    ``(-inf, eos)``.
    """
    if batch_size < 1 or beam_size < 1:
        raise ValueError("batch_size and beam_size must be >= 1")
    steps = int(max_len) if isinstance(max_len, (int, np.integer)) else int(max(max_len))
    running = batch_size * beam_size
    hyps = np.full((running, 1), sos, dtype=np.int64)
    first = np.full(beam_size, -np.inf, dtype=np.float32)
    first[0] = 0.0
    scores = np.tile(first, batch_size).reshape(running, 1)
    end_flag = np.zeros(running, dtype=bool)
    for _ in range(1, steps + 1):
        if end_flag.all():
            break
        logp = np.asarray(step(hyps), dtype=np.float32)
        if logp.ndim != 2 or logp.shape[0] != running:
            raise ValueError(f"step returned shape {logp.shape}, expected ({running}, V)")
        top_k_logp, top_k_index = _row_candidates(logp, beam_size, eos, end_flag)
        scores, best_k_pred, best_hyps_index = _select_beams(scores, top_k_logp, top_k_index, batch_size, beam_size)
        hyps = np.concatenate([hyps[best_hyps_index], best_k_pred[:, None]], axis=1)
        if reorder is not None:
            reorder(best_hyps_index)
        end_flag = hyps[:, -1] == eos
    return _best_beams(hyps, scores, batch_size, beam_size, eos)


def _row_candidates(logp: np.ndarray, beam_size: int, eos: int,
                    end_flag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `beam_size` best (log-prob, token), padded with ``(-inf, eos)`` past V; a finished
    row keeps only ``(0, eos)`` (PaddleSpeech's ``mask_finished_scores`` / ``mask_finished_preds``)."""
    k = min(beam_size, logp.shape[1])
    top_k_logp, top_k_index = _paddle_topk(logp, k)
    if k < beam_size:
        top_k_logp = np.pad(top_k_logp, ((0, 0), (0, beam_size - k)), constant_values=-np.inf)
        top_k_index = np.pad(top_k_index, ((0, 0), (0, beam_size - k)), constant_values=eos)
    top_k_logp[end_flag, 0] = 0.0
    top_k_logp[end_flag, 1:] = -np.inf
    top_k_index[end_flag] = eos
    return top_k_logp, top_k_index


def _select_beams(scores: np.ndarray, top_k_logp: np.ndarray, top_k_index: np.ndarray, batch_size: int,
                  beam_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The next beams of each utterance: the `beam_size` best of its beam_size * beam_size
    (score + candidate); returns their scores [rows, 1], tokens, and parent rows."""
    cand = (scores + top_k_logp).reshape(batch_size, beam_size * beam_size)  # float32 add
    best_scores, offset_k_index = _paddle_topk(cand, beam_size)
    base_k_index = np.arange(batch_size, dtype=np.int64)[:, None] * beam_size * beam_size
    best_k_index = (base_k_index + offset_k_index).reshape(-1)
    best_k_pred = top_k_index.reshape(-1)[best_k_index]
    return best_scores.reshape(batch_size * beam_size, 1), best_k_pred, best_k_index // beam_size


def _best_beams(hyps: np.ndarray, scores: np.ndarray, batch_size: int, beam_size: int,
                eos: int) -> list[tuple[list[int], float]]:
    """Per utterance its best beam (the first maximum), as tokens up to the first `eos` and score."""
    final = scores.reshape(batch_size, beam_size)
    best = _paddle_argmax(final)
    results = []
    for b, n in enumerate(best.tolist()):
        tokens = hyps[b * beam_size + n, 1:].tolist()
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        results.append((tokens, float(final[b, n])))
    return results


# --------------------------------------------------------------------------------------------------
# Attention rescoring


def pad_hypotheses(
    hyps: list[list[int]], sos: int, eos: int, empty_token: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decoder input for rescoring: ``[sos] + hyp`` right-padded with `eos`, int64 [N, U + 1], and lengths.

    This is what PaddleSpeech's ``attention_rescoring`` builds with ``pad_sequence`` + ``add_sos_eos``
    (``ys_in`` is padded with eos, not ignore_id). Lengths are ``len(hyp) + 1``, the valid
    prefix of each row; with a causal decoder the logits at positions < length do not depend on
    the padding. If every hypothesis is empty the array is [N, 1] of `sos`.

    PaddleSpeech replaces an empty hypothesis by ``(blank,)`` before padding (the length stays 1), so
    its rows read ``[sos, blank, eos, ...]``; pass ``empty_token=blank`` to build that exact array
    (all-empty n-bests are then [N, 2]). Scores are the same either way, as position 0 only sees sos.
    """
    contents = [list(h) if (h or empty_token is None) else [empty_token] for h in hyps]
    width = 1 + max((len(c) for c in contents), default=0)
    ys_in = np.full((len(hyps), width), eos, dtype=np.int64)
    ys_in[:, 0] = sos
    for r, c in enumerate(contents):
        ys_in[r, 1 : 1 + len(c)] = c
    lengths = np.array([len(h) + 1 for h in hyps], dtype=np.int64)
    return ys_in, lengths


def attention_rescoring(
    nbest: list[tuple[list[int], float]],
    decoder_log_probs: np.ndarray,
    eos: int,
    ctc_weight: float,
    reverse_log_probs: np.ndarray | None = None,
    reverse_weight: float = 0.0,
    sum_dtype: type = np.float64,
) -> tuple[int, list[float]]:
    """Pick the CTC n-best entry the attention decoder likes best (PaddleSpeech/WeNet ``attention_rescoring``).

    `decoder_log_probs` is [N, U + 1, V]: row i is the log-softmax output of the left-to-right decoder
    fed ``[sos] + hyp_i`` padded (see :func:`pad_hypotheses`), so position j predicts token j and
    position ``len(hyp_i)`` predicts eos. Score_i = sum_j lp[i, j, w_j] + lp[i, len, eos].

    `reverse_log_probs` [N, U + 1, V], used only when ``reverse_weight > 0`` as in PaddleSpeech, is the
    right-to-left decoder fed ``[sos] + reversed(hyp_i)`` (eos-padded): r_score sums
    r[i, len - 1 - j, w_j] + r[i, len, eos], and score = (1 - reverse_weight) * score + reverse_weight * r_score.
    Finally score += ctc_weight * ctc_score.

    Arithmetic: PaddleSpeech does this in a Python loop over ``decoder_out.numpy()`` (float32) starting
    from the Python float ``0.0``, so the precision depends on the NumPy it runs with. NumPy 1.x
    (1.26.4 in both our venv and the PaddleSpeech 1.5.0 venv when this was written) promotes to
    float64 at the first addition: the default ``sum_dtype=np.float64`` reproduces that bit for bit.
    Under NumPy >= 2 (NEP 50) every step stays float32, the blend factor ``1 - reverse_weight`` and
    the added ``ctc_score * ctc_weight`` (computed in double) included: pass ``np.float32`` for that.
    Each operation is cast explicitly, so the result does not depend on our own NumPy version.

    Returns (index of the first maximum, as PaddleSpeech's strict ``>`` loop picks it; all total
    scores as Python floats).
    """
    if not nbest:
        raise ValueError("empty n-best list")
    dec = np.asarray(decoder_log_probs)
    rev = np.asarray(reverse_log_probs) if reverse_log_probs is not None and reverse_weight > 0 else None
    ftype = np.dtype(sum_dtype).type
    best_score = _NEG_INF
    best_index = 0
    totals = []
    for i, (hyp, ctc_score) in enumerate(nbest):
        n = len(hyp)
        score = ftype(0.0)
        for j, w in enumerate(hyp):
            score = ftype(score + ftype(dec[i, j, w]))
        score = ftype(score + ftype(dec[i, n, eos]))
        if rev is not None:
            r_score = ftype(0.0)
            for j, w in enumerate(hyp):
                r_score = ftype(r_score + ftype(rev[i, n - j - 1, w]))
            r_score = ftype(r_score + ftype(rev[i, n, eos]))
            score = ftype(score * ftype(1 - reverse_weight)) + ftype(r_score * ftype(reverse_weight))
        score = ftype(score + ftype(ctc_score * ctc_weight))
        totals.append(float(score))
        if score > best_score:
            best_score = score
            best_index = i
    return best_index, totals
