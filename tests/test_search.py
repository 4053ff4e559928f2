"""Searches in paddle_asr.decode.search: exhaustive references on tiny cases, and PaddleSpeech's own
loops (transcribed with real Paddle ops) on tie-heavy inputs, where tie handling decides the output."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from paddle_asr.decode import search as S
from paddle_asr.decode.search import (
    attention_beam_search,
    attention_rescoring,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    ctc_prefix_beam_search_batch,
    pad_hypotheses,
)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def collapse(path, blank=0) -> tuple[int, ...]:
    out, prev = [], None
    for s in path:
        if s != blank and s != prev:
            out.append(s)
        prev = s
    return tuple(out)


def exhaustive_ctc(log_probs: np.ndarray, blank: int = 0) -> dict[tuple[int, ...], float]:
    """log P(labels | x) for every label sequence, by summing over all V**T alignments."""
    num_frames, vocab = log_probs.shape
    total: dict[tuple[int, ...], list[float]] = {}
    for path in itertools.product(range(vocab), repeat=num_frames):
        total.setdefault(collapse(path, blank), []).append(sum(log_probs[t, s] for t, s in enumerate(path)))
    return {k: float(np.logaddexp.reduce(v)) for k, v in total.items()}


# ------------------------------------------------------------------------------------------------ CTC prefix


@pytest.mark.parametrize("seed", range(8))
def test_prefix_beam_search_equals_exhaustive_sum_over_alignments(seed):
    rng = np.random.default_rng(seed)
    num_frames, vocab = int(rng.integers(1, 6)), int(rng.integers(2, 5))
    lp = log_softmax(rng.normal(scale=2.0, size=(num_frames, vocab)))
    exact = exhaustive_ctc(lp)
    # Beam wider than V and than the number of prefixes: no pruning, so every label sequence is exact.
    nbest = ctc_prefix_beam_search(lp, beam_size=1000)
    got = {tuple(h): s for h, s in nbest if s > -math.inf}
    # A repeat extension of a prefix with no blank-ending mass is still entered (with -inf), as in
    # PaddleSpeech's defaultdict; those are the label sequences no alignment of length T produces.
    assert all(tuple(h) not in exact for h, s in nbest if s == -math.inf)
    assert got.keys() == exact.keys()
    for k, v in exact.items():
        assert got[k] == pytest.approx(v, abs=1e-9)
    best = max(exact, key=exact.get)
    assert tuple(nbest[0][0]) == best and nbest[0][1] == pytest.approx(exact[best], abs=1e-9)
    scores = [s for _, s in nbest]
    assert scores == sorted(scores, reverse=True)
    # Small beams still return beam_size entries, best first, each a real label sequence.
    for beam in (1, 2, 3):
        small = ctc_prefix_beam_search(lp, beam_size=beam)
        assert len(small) == min(beam, len(nbest))
        assert [s for _, s in small] == sorted((s for _, s in small), reverse=True)
        for h, s in small:  # pruned search only loses alignments, never invents probability
            assert s <= exact[tuple(h)] + 1e-9


def test_prefix_beam_search_matches_greedy_on_peaky_posteriors():
    rng = np.random.default_rng(0)
    for _ in range(5):
        num_frames, vocab = 60, 40
        path = rng.integers(0, vocab, size=num_frames)
        path[rng.random(num_frames) < 0.5] = 0
        logits = rng.normal(size=(num_frames, vocab))
        logits[np.arange(num_frames), path] += 12.0
        lp = log_softmax(logits).astype(np.float32)
        greedy = ctc_greedy_search(lp[None], np.array([num_frames]))[0]
        nbest = ctc_prefix_beam_search(lp, beam_size=10)
        assert len(nbest) == 10
        assert nbest[0][0] == greedy == list(collapse(path))


def test_prefix_beam_search_blank_only_and_empty():
    lp = np.zeros((7, 1), dtype=np.float32)  # a one-token vocabulary: blank, probability 1
    assert ctc_prefix_beam_search(lp, beam_size=5) == [([], 0.0)]
    lp = np.log(np.full((4, 1), 0.5))
    ((hyp, score),) = ctc_prefix_beam_search(lp, beam_size=3)
    assert hyp == [] and score == pytest.approx(4 * math.log(0.5))
    # Other tokens impossible: the empty hypothesis wins, extensions carry -inf (kept, as in PaddleSpeech).
    lp = np.full((5, 3), -np.inf, dtype=np.float32)
    lp[:, 0] = 0.0
    nbest = ctc_prefix_beam_search(lp, beam_size=3)
    assert nbest[0] == ([], 0.0)
    assert all(s == -np.inf for _, s in nbest[1:])
    # No frames at all.
    assert ctc_prefix_beam_search(np.zeros((0, 4), np.float32), beam_size=4) == [([], 0.0)]


def test_prefix_beam_search_batch_cuts_each_utterance_to_its_length():
    rng = np.random.default_rng(3)
    lp = log_softmax(rng.normal(size=(3, 9, 6))).astype(np.float32)
    lengths = np.array([9, 4, 1])
    lp[1, 4:] = np.nan  # padding must never be read
    lp[2, 1:] = np.nan
    batch = ctc_prefix_beam_search_batch(lp, lengths, beam_size=4)
    assert batch == [ctc_prefix_beam_search(lp[b, : lengths[b]], 4) for b in range(3)]


def test_log_add_helpers_agree_bitwise_with_paddlespeech_formula():
    rng = np.random.default_rng(0)
    vals = list(rng.normal(scale=30, size=3000)) + [-math.inf, 0.0, -0.0, 1e-300]
    for _ in range(3000):
        a, b, c = (vals[i] for i in rng.integers(0, len(vals), size=3))
        assert S._log_add2(a, b) == S._log_add([a, b])
        assert S._log_add3(a, b, c) == S._log_add([a, b, c])
    assert S._log_add3(-math.inf, -math.inf, -math.inf) == -math.inf


# ------------------------------------------------------------------------------------------------ attention


def table_step(tables: np.ndarray, beam_size: int, calls: list | None = None):
    """A stand-in decoder: next-token log-probs depend on utterance, position and last token only."""

    def step(hyps: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(hyps.copy())
        pos = hyps.shape[1] - 1
        utt = np.arange(hyps.shape[0]) // beam_size
        return tables[utt, pos, hyps[:, -1]]

    return step


def brute_force_attention(table: np.ndarray, sos: int, eos: int, max_len: int) -> list[tuple[tuple[int, ...], float]]:
    """Every complete hypothesis: ended by eos within max_len steps, or max_len tokens without eos."""
    vocab = table.shape[-1]
    out = []
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos in seq[:-1] or (seq[-1] != eos and n < max_len):
                continue
            prev, score = sos, 0.0
            for pos, tok in enumerate(seq):
                score += float(table[pos, prev, tok])
                prev = tok
            out.append((seq[:-1] if seq[-1] == eos else seq, score))
    return sorted(out, key=lambda x: -x[1])


V_ATT, SOS, EOS, MAX_LEN = 5, 4, 4, 4


def random_tables(seed: int, batch: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(batch, MAX_LEN, V_ATT, V_ATT))
    logits[..., EOS] -= 0.5  # let some hypotheses run to max_len
    return log_softmax(logits).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_attention_beam_search_with_full_coverage_equals_brute_force(seed):
    tables = random_tables(seed, 3)
    # 4**3 live prefixes * 5 + 21 finished = 341 candidates at the last step: a beam of 350 keeps all.
    beam = 350
    res = attention_beam_search(table_step(tables, beam), 3, beam, SOS, EOS, MAX_LEN)
    for b in range(3):
        ranked = brute_force_attention(tables[b], SOS, EOS, MAX_LEN)
        assert ranked[0][1] - ranked[1][1] > 1e-4  # a clear winner, so float32 sums cannot flip it
        assert tuple(res[b][0]) == ranked[0][0]
        assert res[b][1] == pytest.approx(ranked[0][1], abs=1e-5)
        # Utterances are independent: the same table alone gives the same answer.
        alone = attention_beam_search(table_step(tables[b : b + 1], beam), 1, beam, SOS, EOS, MAX_LEN)
        assert alone[0] == res[b]


def test_attention_beam_search_small_beam_batch_is_independent_per_utterance():
    tables = random_tables(11, 3)
    res = attention_beam_search(table_step(tables, 3), 3, 3, SOS, EOS, MAX_LEN)
    for b in range(3):
        assert res[b] == attention_beam_search(table_step(tables[b : b + 1], 3), 1, 3, SOS, EOS, MAX_LEN)[0]
    # A sequence of per-utterance encoder lengths means the padded (maximum) length, as in PaddleSpeech.
    assert attention_beam_search(table_step(tables, 3), 3, 3, SOS, EOS, [2, MAX_LEN, 3]) == res


def test_attention_beam_search_finished_beams_stay_finished_and_stop_early():
    tables = random_tables(5, 2)
    calls: list[np.ndarray] = []
    attention_beam_search(table_step(tables, 4, calls), 2, 4, SOS, EOS, MAX_LEN)
    assert any((h[:, 1:] == EOS).any() for h in calls)
    for hyps in calls:
        for row in hyps[:, 1:]:
            ended = np.flatnonzero(row == EOS)
            if ended.size:
                assert (row[ended[0] :] == EOS).all()
    # eos always best and by far: every beam ends at step 1 or 2 and the loop stops before max_len.
    peaky = np.full((2, 10, V_ATT, V_ATT), -20.0, np.float32)
    peaky[..., EOS] = 0.0
    calls.clear()
    res = attention_beam_search(table_step(peaky, 3, calls), 2, 3, SOS, EOS, 10)
    assert res == [([], 0.0), ([], 0.0)]
    assert len(calls) == 2  # step 1 ends beam 0; step 2 ends the other two beams
    # No eos reachable: hypotheses are cut at max_len and keep all their tokens.
    no_eos = np.zeros((1, 3, V_ATT, V_ATT), np.float32)
    no_eos[..., EOS] = -np.inf
    no_eos[..., 2] = 1.0
    tokens, score = attention_beam_search(table_step(no_eos, 2), 1, 2, SOS, EOS, 3)[0]
    assert tokens == [2, 2, 2] and score == 3.0


# ------------------------------------------------------------------------------------------------ rescoring


def test_pad_hypotheses_layout():
    ys_in, lengths = pad_hypotheses([[5, 6, 7], [], [8]], sos=9, eos=10)
    assert ys_in.dtype == np.int64 and lengths.dtype == np.int64
    assert ys_in.tolist() == [[9, 5, 6, 7], [9, 10, 10, 10], [9, 8, 10, 10]]
    assert lengths.tolist() == [4, 1, 2]
    ys_in, lengths = pad_hypotheses([[], []], sos=3, eos=3)
    assert ys_in.tolist() == [[3], [3]] and lengths.tolist() == [1, 1]
    # PaddleSpeech's exact tensor: an empty hypothesis is replaced by (blank,) before padding.
    ys_in, lengths = pad_hypotheses([[5, 6], []], sos=9, eos=10, empty_token=0)
    assert ys_in.tolist() == [[9, 5, 6], [9, 0, 10]] and lengths.tolist() == [3, 1]
    ys_in, _ = pad_hypotheses([[], []], sos=3, eos=3, empty_token=0)
    assert ys_in.tolist() == [[3, 0], [3, 0]]


def test_attention_rescoring_arithmetic():
    eos = 3
    nbest = [([1, 2], -1.0), ([2], -3.0), ([], -4.0)]
    dec = np.full((3, 3, 4), -9.0, dtype=np.float32)
    dec[0, 0, 1], dec[0, 1, 2], dec[0, 2, eos] = -0.5, -0.25, -1.0  # l2r: -1.75
    dec[1, 0, 2], dec[1, 1, eos] = -0.5, -0.5  # l2r: -1.0
    dec[2, 0, eos] = -2.0  # empty hypothesis: only the eos term
    idx, totals = attention_rescoring(nbest, dec, eos, ctc_weight=0.5)
    assert totals == [-1.75 - 0.5, -1.0 - 1.5, -2.0 - 2.0]
    assert idx == 0
    idx, totals = attention_rescoring(nbest, dec, eos, ctc_weight=0.0)
    assert totals == [-1.75, -1.0, -2.0] and idx == 1
    # Right-to-left decoder: row i read [sos] + reversed(hyp); position len-1-j scores token j.
    rev = np.full((3, 3, 4), -9.0, dtype=np.float32)
    rev[0, 1, 1], rev[0, 0, 2], rev[0, 2, eos] = -0.125, -0.125, -0.25  # r2l: -0.5
    rev[1, 0, 2], rev[1, 1, eos] = -2.0, -2.0  # r2l: -4.0
    rev[2, 0, eos] = -1.0
    idx, totals = attention_rescoring(nbest, dec, eos, 0.5, rev, reverse_weight=0.25)
    assert totals == [
        0.75 * -1.75 + 0.25 * -0.5 - 0.5,
        0.75 * -1.0 + 0.25 * -4.0 - 1.5,
        0.75 * -2.0 + 0.25 * -1.0 - 2.0,
    ]
    assert idx == 0
    # reverse_weight 0 ignores the reverse decoder entirely (PaddleSpeech does not read it then).
    assert attention_rescoring(nbest, dec, eos, 0.5, rev * np.nan, 0.0) == attention_rescoring(nbest, dec, eos, 0.5)
    # Ties: the first maximum wins (strict '>').
    tie = [([1], 0.0), ([1], 0.0), ([2], 0.0)]
    dec_t = np.zeros((3, 2, 4), np.float32)
    dec_t[2, 0, 2] = -1.0
    assert attention_rescoring(tie, dec_t, eos, 1.0) == (0, [0.0, 0.0, -1.0])


def test_attention_rescoring_precision_follows_numpy_promotion():
    # float32 inputs: under NumPy 1.x PaddleSpeech's Python loop sums in float64, under NumPy 2 in float32.
    nbest = [([1, 1, 1], 0.1)]
    dec = np.full((1, 4, 3), np.float32(0.1), dtype=np.float32)
    _, (f64,) = attention_rescoring(nbest, dec, 2, 0.3)
    _, (f32,) = attention_rescoring(nbest, dec, 2, 0.3, sum_dtype=np.float32)
    x = float(np.float32(0.1))
    assert f64 == x + x + x + x + 0.1 * 0.3
    acc = np.float32(0.0)
    for _ in range(4):
        acc = np.float32(acc + np.float32(0.1))
    assert f32 == float(np.float32(acc + np.float32(0.1 * 0.3)))
    assert f32 != f64


# ------------------------------------------------------------------------------------------------ Paddle fidelity
# PaddleSpeech's decisions rest on paddle.topk, whose CPU kernel orders ties by libstdc++'s partial_sort /
# nth_element, not by index. These tests run the real Paddle op (paddle is a dependency of this repo).

paddle = pytest.importorskip("paddle")


@pytest.mark.parametrize(
    "width,k",
    [(4, 1), (5, 5), (10, 3), (33, 17), (100, 10), (640, 10), (641, 10), (1000, 40), (4233, 10), (20000, 350)],
)
def test_paddle_topk_emulation_matches_paddle_with_ties(width, k):
    rng = np.random.default_rng(width * 7 + k)
    for levels in (1, 2, 4, 50):
        x = rng.integers(0, levels + 1, size=(5, width)).astype(np.float32)
        x[x == 0] = -np.inf
        vals, idx = paddle.topk(paddle.to_tensor(x), k)
        my_vals, my_idx = S._paddle_topk(x, k)
        assert np.array_equal(my_idx, idx.numpy())
        assert np.array_equal(my_vals, vals.numpy())
    x = rng.normal(size=(3, width)).astype(np.float32)  # no ties: the NumPy fast path
    assert np.array_equal(S._paddle_topk(x, k)[1], paddle.topk(paddle.to_tensor(x), k)[1].numpy())


def test_paddle_argmax_takes_first_maximum():
    x = np.array([[1, 3, 3, 2], [-np.inf] * 4, [0, 0, 5, 5]], np.float32)
    assert np.array_equal(S._paddle_argmax(x), paddle.argmax(paddle.to_tensor(x), axis=-1).numpy())


def _ps_log_add(args):
    """paddlespeech.s2t.utils.utility.log_add, verbatim."""
    if all(a == -float("inf") for a in args):
        return -float("inf")
    a_max = max(args)
    lsp = math.log(sum(math.exp(a - a_max) for a in args))
    return a_max + lsp


def _ps_ctc_prefix_beam_search(ctc_probs: np.ndarray, beam_size: int, blank_id: int = 0):
    """The search loop of PaddleSpeech 1.5.0 U2BaseModel._ctc_prefix_beam_search, on a Paddle tensor."""
    from collections import defaultdict

    ctc_probs = paddle.to_tensor(ctc_probs)
    cur_hyps = [(tuple(), (0.0, -float("inf")))]
    for t in range(0, ctc_probs.shape[0]):
        logp = ctc_probs[t]
        next_hyps = defaultdict(lambda: (-float("inf"), -float("inf")))
        top_k_logp, top_k_index = logp.topk(beam_size)
        for s in top_k_index:
            s = s.item()
            ps = logp[s].item()
            for prefix, (pb, pnb) in cur_hyps:
                last = prefix[-1] if len(prefix) > 0 else None
                if s == blank_id:
                    n_pb, n_pnb = next_hyps[prefix]
                    n_pb = _ps_log_add([n_pb, pb + ps, pnb + ps])
                    next_hyps[prefix] = (n_pb, n_pnb)
                elif s == last:
                    n_pb, n_pnb = next_hyps[prefix]
                    n_pnb = _ps_log_add([n_pnb, pnb + ps])
                    next_hyps[prefix] = (n_pb, n_pnb)
                    n_prefix = prefix + (s,)
                    n_pb, n_pnb = next_hyps[n_prefix]
                    n_pnb = _ps_log_add([n_pnb, pb + ps])
                    next_hyps[n_prefix] = (n_pb, n_pnb)
                else:
                    n_prefix = prefix + (s,)
                    n_pb, n_pnb = next_hyps[n_prefix]
                    n_pnb = _ps_log_add([n_pnb, pb + ps, pnb + ps])
                    next_hyps[n_prefix] = (n_pb, n_pnb)
        next_hyps = sorted(next_hyps.items(), key=lambda x: _ps_log_add(list(x[1])), reverse=True)
        cur_hyps = next_hyps[:beam_size]
    return [(list(y[0]), _ps_log_add([y[1][0], y[1][1]])) for y in cur_hyps]


@pytest.fixture(params=["compiled", "python"])
def prefix_search(request, monkeypatch):
    """Runs a test with the compiled prefix search (decode/ctc_prefix_beam.cc, the default) and with
    the Python one (where the library cannot be built): both must be PaddleSpeech's."""
    if request.param == "python":
        monkeypatch.setattr(S.compiled_search, "get", lambda: None)
    else:
        assert S.compiled_search.get() is not None, S.compiled_search.status()  # g++ is here: it must build
    return request.param


@pytest.mark.parametrize("quantum", [None, 1.0, 0.5])
def test_prefix_beam_search_matches_paddlespeech_loop_bitwise(quantum, prefix_search):
    rng = np.random.default_rng(17)
    for vocab, beam in [(6, 3), (12, 5), (50, 10), (700, 10)]:
        lp = log_softmax(rng.normal(scale=3.0, size=(25, vocab))).astype(np.float32)
        if quantum:  # coarse values: many exact ties among candidates and among prefix scores
            lp = (np.round(lp / quantum) * quantum).astype(np.float32)
        assert ctc_prefix_beam_search(lp, beam) == _ps_ctc_prefix_beam_search(lp, beam)


@pytest.mark.parametrize("quantum", [None, 0.5])
def test_pruned_prefix_beam_search_is_paddlespeechs_on_peaky_posteriors(quantum, prefix_search):
    """Peaky posteriors (blank most frames, as a trained model's) are where `_beam_floor` skips most
    new prefixes; the n-best must stay PaddleSpeech's bit for bit, ties included."""
    rng = np.random.default_rng(29)
    skipped = 0
    for vocab, beam, frames in [(8, 3, 40), (60, 10, 60), (400, 10, 60)]:
        logits = rng.normal(scale=6.0, size=(frames, vocab))
        logits[:, 0] += rng.uniform(0, 14, size=frames)
        lp = log_softmax(logits).astype(np.float32)
        if quantum:
            lp = (np.round(lp / quantum) * quantum).astype(np.float32)
        assert ctc_prefix_beam_search(lp, beam) == _ps_ctc_prefix_beam_search(lp, beam)
        cur = [((), (0.0, -math.inf))]
        for tokens, values in zip(*[a.tolist() for a in reversed(S._paddle_topk(lp, beam))]):
            floor = S._beam_floor(cur, tokens, values, 0, beam)
            pruned, full = (S.ctc_prefix_step(cur, tokens, values, 0, prune=p) for p in (floor, None))
            skipped += len(full) - len(pruned)
            cur = sorted(full.items(), key=lambda x: S._log_add2(*x[1]), reverse=True)[:beam]
    assert skipped > 100  # the floor did skip prefixes


def _ps_recognize(step, batch_size: int, beam_size: int, sos: int, eos: int, maxlen: int):
    """PaddleSpeech 1.5.0 U2BaseModel.recognize's search, the decoder replaced by `step`, in Paddle ops.

    mask_finished_scores / mask_finished_preds (s2t/modules/mask.py) are inlined with paddle.where.
    """
    running_size = batch_size * beam_size
    hyps = paddle.full([running_size, 1], sos, dtype="int64")
    scores = paddle.to_tensor([0.0] + [-float("inf")] * (beam_size - 1), dtype="float32")
    scores = scores.tile([batch_size]).unsqueeze(1)
    end_flag = paddle.zeros_like(scores, dtype="bool")
    for _ in range(1, maxlen + 1):
        if end_flag.astype("int64").sum() == running_size:
            break
        logp = paddle.to_tensor(step(hyps.numpy()))
        top_k_logp, top_k_index = logp.topk(beam_size)
        zero_mask = paddle.zeros_like(end_flag, dtype="bool")
        if beam_size > 1:
            unfinished = paddle.concat((zero_mask, end_flag.tile([1, beam_size - 1])), axis=1)
            finished = paddle.concat((end_flag, zero_mask.tile([1, beam_size - 1])), axis=1)
        else:
            unfinished, finished = zero_mask, end_flag
        top_k_logp = paddle.where(unfinished, paddle.full_like(top_k_logp, -float("inf")), top_k_logp)
        top_k_logp = paddle.where(finished, paddle.zeros_like(top_k_logp), top_k_logp)
        top_k_index = paddle.where(end_flag.tile([1, beam_size]), paddle.full_like(top_k_index, eos), top_k_index)
        scores = scores + top_k_logp
        scores = scores.reshape([batch_size, beam_size * beam_size])
        scores, offset_k_index = scores.topk(k=beam_size)
        scores = scores.reshape([-1, 1])
        base_k_index = paddle.arange(batch_size).reshape([-1, 1]).tile([1, beam_size])
        base_k_index = base_k_index * beam_size * beam_size
        best_k_index = base_k_index.reshape([-1]) + offset_k_index.reshape([-1])
        best_k_pred = paddle.index_select(top_k_index.reshape([-1]), index=best_k_index, axis=0)
        best_hyps_index = best_k_index // beam_size
        last_best_k_hyps = paddle.index_select(hyps, index=best_hyps_index, axis=0)
        hyps = paddle.concat((last_best_k_hyps, best_k_pred.reshape([-1, 1])), axis=1)
        end_flag = (hyps[:, -1] == eos).reshape([-1, 1])
    scores = scores.reshape([batch_size, beam_size])
    best_index = paddle.argmax(scores, axis=-1)
    best_hyps_index = best_index + paddle.arange(batch_size, dtype="int64") * beam_size
    best_hyps = paddle.index_select(hyps, index=best_hyps_index, axis=0)[:, 1:].numpy()
    best_scores = paddle.index_select(scores.reshape([-1]), index=best_hyps_index, axis=0).numpy()
    out = []
    for row, sc in zip(best_hyps.tolist(), best_scores.tolist()):
        out.append((row[: row.index(eos)] if eos in row else row, sc))  # TextFeaturizer.defeaturize stops at eos
    return out


@pytest.mark.parametrize("quantum", [None, 1.0, 0.5])
def test_attention_beam_search_matches_paddlespeech_loop(quantum):
    rng = np.random.default_rng(23)
    for vocab, beam, batch, maxlen in [(5, 5, 3, 4), (8, 3, 2, 6), (30, 10, 3, 8), (12, 1, 2, 5)]:
        eos = vocab - 1
        logits = rng.normal(scale=2.0, size=(batch, maxlen, vocab, vocab))
        logits[..., eos] -= 1.0
        tables = log_softmax(logits).astype(np.float32)
        if quantum:
            tables = (np.round(tables / quantum) * quantum).astype(np.float32)
        ours = attention_beam_search(table_step(tables, beam), batch, beam, eos, eos, maxlen)
        theirs = _ps_recognize(table_step(tables, beam), batch, beam, eos, eos, maxlen)
        assert ours == theirs
