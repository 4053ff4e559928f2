"""Hotwords (contextual biasing): the context graph itself (partial and completed matches, back-off
with its refund, overlapping phrases, against a brute-force count), context lists and their errors,
the biased CTC prefix beam search (exact on small cases, the plain search at score 0, streaming), and
its effect on a real decode of real speech."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paddle_asr.data.tokenizer import BpeTokenizer, CharTokenizer
from paddle_asr.decode.context_graph import ContextGraph, load_context_graph, read_context_list
from paddle_asr.decode.search import CtcPrefixBeam, ctc_prefix_beam_search
from paddle_asr.errors import AsrError
from tests.conftest import real_fixture
from tests.test_search import exhaustive_ctc, log_softmax

A, B, C, D = 1, 2, 3, 4
S = 1.5  # the bonus per unit in these tests
UNK_ID = 1


def bonuses(graph: ContextGraph, tokens: list[int]) -> tuple[list[float], float]:
    """The running bonus after each token, and the bonus after `finish`."""
    state, total, running = graph.root, 0.0, []
    for t in tokens:
        change, state = graph.step(state, t)
        total += change
        running.append(total)
    return running, total + graph.finish(state)


# ------------------------------------------------------------------------------------------------ the graph


def test_a_partial_match_earns_per_unit_and_is_refunded_at_the_end():
    graph = ContextGraph([[A, B, C]], S)
    running, final = bonuses(graph, [A, B])
    assert running == [S, 2 * S]
    assert final == 0.0


def test_a_completed_match_keeps_its_bonus():
    graph = ContextGraph([[A, B, C]], S)
    running, final = bonuses(graph, [D, A, B, C, D, D])
    assert running == [0.0, S, 2 * S, 3 * S, 3 * S, 3 * S]
    assert final == 3 * S


def test_back_off_refunds_the_bonus_of_a_broken_partial_match():
    graph = ContextGraph([[A, B, C]], S)
    running, final = bonuses(graph, [A, B, D])
    assert running == [S, 2 * S, 0.0]  # D breaks the match: the 2 units' bonus is taken back
    assert final == 0.0
    # Backing off along the failure arc keeps what still matches: A B A leaves the partial match A.
    running, final = bonuses(graph, [A, B, A, B, C])
    assert running == [S, 2 * S, S, 2 * S, 3 * S]
    assert final == 3 * S


def test_back_off_lands_on_a_partial_match_of_another_phrase():
    graph = ContextGraph([[A, B, D], [B, C]], S)
    running, final = bonuses(graph, [A, B, C])
    # A B is a partial match of ABD; C breaks it, and B C completes BC: 2 units refunded, 2 earned.
    assert running == [S, 2 * S, 2 * S]
    assert final == 2 * S


@pytest.mark.parametrize("phrases,tokens,expected", [
    ([[A, B, C], [B, C]], [A, B, C], 5 * S),   # a phrase ending inside another: both count
    ([[A, B], [B, C]], [A, B, C], 4 * S),      # overlapping phrases sharing a unit
    ([[A, A]], [A, A, A], 4 * S),              # a phrase overlapping itself
    ([[A, B], [A, B, C]], [A, B, D], 2 * S),   # the shorter phrase completes, the longer breaks
    ([[A, B], [A, B, C]], [A, B, C], 5 * S),   # both complete
    ([[A, B], [A, B]], [A, B], 2 * S),         # a phrase listed twice counts once
])
def test_overlapping_phrases_each_count(phrases, tokens, expected):
    assert bonuses(ContextGraph(phrases, S), tokens)[1] == expected


def brute_force_bonus(phrases: set[tuple[int, ...]], tokens: tuple[int, ...], finished: bool) -> float:
    """score x (units of every phrase occurrence) + score x (longest suffix that is a proper prefix of a phrase)."""
    units = sum(len(p) for p in phrases for i in range(len(tokens)) if tokens[i: i + len(p)] == p)
    open_match = 0 if finished else max(
        (k for k in range(1, len(tokens) + 1) for p in phrases if len(p) > k and tokens[-k:] == p[:k]), default=0)
    return S * (units + open_match)


@pytest.mark.parametrize("seed", range(20))
def test_the_bonus_is_the_brute_force_count_after_every_unit(seed):
    rng = np.random.default_rng(seed)
    phrases = {tuple(int(t) for t in rng.integers(1, 4, int(rng.integers(1, 5))))
               for _ in range(int(rng.integers(1, 6)))}
    graph = ContextGraph([list(p) for p in phrases], S)
    tokens = tuple(int(t) for t in rng.integers(1, 5, 30))
    running, final = bonuses(graph, list(tokens))
    for n, got in enumerate(running, 1):
        assert got == pytest.approx(brute_force_bonus(phrases, tokens[:n], False)), (phrases, tokens[:n])
    assert final == pytest.approx(brute_force_bonus(phrases, tokens, True))


# ------------------------------------------------------------------------------------------------ context lists


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer(["<blank>", "<unk>", "中", "国", "广", "州", "市", "<eos>"])


def test_a_context_list_is_tokenized_with_the_models_units(tmp_path):
    path = tmp_path / "hotwords.txt"
    path.write_text("广州\n\n  中国  \n广州市\n", encoding="utf-8")
    assert read_context_list(path, char_tokenizer()) == [[4, 5], [2, 3], [4, 5, 6]]
    assert load_context_graph(path, char_tokenizer(), 2.0).num_phrases == 3


def test_bpe_phrases_are_tokenized_into_word_pieces(tmp_path):
    import sentencepiece as spm

    model = real_fixture("librispeech.train_960_unigram5000.bpemodel")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    units = ["<blank>", "<unk>", *sorted({sp.id_to_piece(i) for i in range(3, sp.get_piece_size())}), "<eos>"]
    tokenizer = BpeTokenizer(units, model)
    path = tmp_path / "hotwords.txt"
    path.write_text("SORROW OF HIS LIFE\n", encoding="utf-8")
    (phrase,) = read_context_list(path, tokenizer)
    assert [units[i] for i in phrase] == sp.encode("SORROW OF HIS LIFE", out_type=str)
    assert units[phrase[0]].startswith("\u2581")


@pytest.mark.parametrize("text,match", [
    ("广州\n中国人\n", r"hotwords.txt:2: the phrase '中国人' has the unit '人'"),
    ("广州\n中 国\n", r"hotwords.txt:2: the phrase '中 国' has the unit '<space>'"),
    ("\n  \n", r"hotwords.txt: the context list has no phrase"),
])
def test_a_bad_context_list_is_an_error_naming_file_line_and_unit(tmp_path, text, match):
    path = tmp_path / "hotwords.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AsrError, match=match):
        read_context_list(path, char_tokenizer())


def test_an_unreadable_context_list_is_an_error(tmp_path):
    with pytest.raises(AsrError, match="cannot read the context list .*missing.txt"):
        read_context_list(tmp_path / "missing.txt", char_tokenizer())
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(AsrError, match="latin1.txt.*UTF-8"):
        read_context_list(tmp_path / "latin1.txt", char_tokenizer())


@pytest.mark.parametrize("text,match", [
    ("context_score: -1\n", r"context_score: -1(\.0)? is not >= 0"),
    ("methods: [ctc_greedy_search, attention]\ncontext_list: hotwords.txt\n",
     r"context_list: hotwords bias ctc_prefix_beam_search and attention_rescoring, and methods names neither"),
])
def test_decode_config_hotword_keys_are_checked(tmp_path, text, match):
    from paddle_asr.config import load_decode_config

    (tmp_path / "decode.yaml").write_text(text)
    with pytest.raises(AsrError, match="decode.yaml: " + match):
        load_decode_config(tmp_path / "decode.yaml")


def test_results_md_names_the_list_and_score_of_a_biased_run():
    from paddle_asr.results import _mode

    decoding = {"decoding_chunk_size": 16, "context_list": "conf/hotwords.txt", "context_score": 2.0}
    assert _mode({"decoding": decoding}) == "streaming, chunk 16, hotwords hotwords.txt (score 2.0)"
    assert _mode({"decoding": {"decoding_chunk_size": -1, "context_list": ""}}) == "full"


# ------------------------------------------------------------------------------------------------ biased search


def random_log_probs(seed: int, frames: int, vocab: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (frames, vocab)).astype(np.float32)
    logits[:, 0] += 2  # blank-heavy, as CTC is
    return log_softmax(logits).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_a_zero_score_context_searches_exactly_as_the_plain_search(seed):
    lp = random_log_probs(seed, 80, 9)
    graph = ContextGraph([[1, 2], [3, 4, 5], [2, 2]], 0.0)
    assert ctc_prefix_beam_search(lp, 5, context=graph) == ctc_prefix_beam_search(lp, 5)


@pytest.mark.parametrize("seed", range(6))
def test_without_pruning_each_score_is_the_ctc_probability_plus_the_finished_bonus(seed):
    rng = np.random.default_rng(seed)
    lp = log_softmax(rng.normal(scale=2.0, size=(int(rng.integers(2, 6)), 4)))
    phrases = {(1, 2), (2,), (3, 1, 3)}
    exact = exhaustive_ctc(lp)
    nbest = ctc_prefix_beam_search(lp, beam_size=1000, context=ContextGraph([list(p) for p in phrases], S))
    got = {tuple(h): s for h, s in nbest if s > -math.inf}
    assert got.keys() == exact.keys()
    for h, s in got.items():
        assert s == pytest.approx(exact[h] + brute_force_bonus(phrases, h, True)), h
    assert [s for _, s in nbest] == sorted((s for _, s in nbest), reverse=True)


def test_a_biased_stream_advanced_in_pieces_is_the_whole_search():
    lp = random_log_probs(7, 120, 12)
    graph = ContextGraph([[1, 2], [3, 4, 5], [5, 1]], 2.0)
    whole = ctc_prefix_beam_search(lp, 5, context=graph)
    beam = CtcPrefixBeam(5, context=graph)
    for start in range(0, 120, 17):
        beam.advance(lp[start: start + 17])
    assert beam.nbest() == whole


def test_the_bonus_lifts_a_listed_phrase_over_a_likelier_hypothesis():
    # Three tokens, each frame: the second unit is 3 (p 0.6) or 2 (p 0.4); plain search says 1 3 4.
    probs = np.full((5, 6), 1e-4)
    probs[:, 5] = 1e-9  # never among a frame's 4 candidates
    for t, dist in enumerate([{1: 1.0}, {0: 1.0}, {3: 0.6, 2: 0.4}, {0: 1.0}, {4: 1.0}]):
        for k, p in dist.items():
            probs[t, k] = p
    lp = np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    assert ctc_prefix_beam_search(lp, 4)[0][0] == [1, 3, 4]
    assert ctc_prefix_beam_search(lp, 4, context=ContextGraph([[1, 2]], 0.1))[0][0] == [1, 3, 4]
    assert ctc_prefix_beam_search(lp, 4, context=ContextGraph([[1, 2]], 1.0))[0][0] == [1, 2, 4]
    # The bonus only reorders the candidates the frames propose: a phrase they never propose changes
    # nothing, whatever its score.
    assert ctc_prefix_beam_search(lp, 4, context=ContextGraph([[5, 5]], 10.0))[0][0] == [1, 3, 4]


# ------------------------------------------------------------------------------------------------ real speech


@pytest.fixture(scope="module")
def real_decode():
    """A small U2 (random weights, peaky posteriors; tests/test_export_quant.py) on the AISHELL fixture
    recording, through the dynamic-graph backend: (backend, units, encoder output, lengths, CTC log-probs)."""
    from paddle_asr.config import FeatureConfig
    from paddle_asr.data.audio import read_audio_resampled
    from paddle_asr.families import dygraph_backend
    from paddle_asr.features import compute_fbank
    from tests.test_export_quant import build_small_u2

    _, model = build_small_u2()
    backend = dygraph_backend(model)
    feats = compute_fbank(read_audio_resampled(real_fixture("aishell-BAC009S0724W0121.wav"), 16000), FeatureConfig())
    units = ["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(57)] + ["<eos>"]
    return backend, units, *backend.encode(feats[None], np.array([len(feats)], np.int64))


def an_alternative_phrase(nbest: list[tuple[list[int], float]], also_avoid: list[int] = ()) -> list[int]:
    """Two consecutive units (not <unk>) of the likeliest runner-up that neither the best hypothesis
    nor `also_avoid` (another decode) has in a row."""
    best = nbest[0][0]
    pairs = set(zip(best, best[1:])) | set(zip(also_avoid, also_avoid[1:]))
    for hyp, _ in nbest[1:]:
        for pair in zip(hyp, hyp[1:]):
            if pair not in pairs and UNK_ID not in pair:
                return list(pair)
    raise AssertionError("every hypothesis of the n-best has the best one's unit pairs")


def occurrences(hyp: list[int], phrase: list[int]) -> int:
    return sum(hyp[i: i + len(phrase)] == phrase for i in range(len(hyp)))


@pytest.mark.parametrize("method", ["ctc_prefix_beam_search", "attention_rescoring"])
def test_hotwords_bring_a_listed_phrase_into_a_real_decode(real_decode, method, tmp_path):
    from paddle_asr.config import DecodeConfig
    from paddle_asr.decode.recognizer import Recognizer

    backend, units, enc, enc_lengths, ctc_lp = real_decode
    conf = DecodeConfig(methods=[method], beam_size=10)
    plain = Recognizer(backend, conf, units).search(enc, enc_lengths, ctc_lp)[method][0]
    phrase = an_alternative_phrase(ctc_prefix_beam_search(ctc_lp[0, : enc_lengths[0]], 10))
    assert occurrences(plain, phrase) == 0
    biased = Recognizer(backend, conf, units, ContextGraph([phrase], 3.0)).search(enc, enc_lengths, ctc_lp)[method][0]
    assert occurrences(biased, phrase) > 0, (plain, biased, phrase)
    # Units no frame proposes among its 10 candidates cannot be brought in: the decode stays as it was.
    proposed = set(np.argsort(-ctc_lp[0, : enc_lengths[0]], axis=1)[:, :10].ravel().tolist())
    never = [u for u in range(2, len(units) - 1) if u not in proposed][:3]
    assert len(never) == 3
    unheard = Recognizer(backend, conf, units, ContextGraph([never[:2], never[1:]], 3.0))
    assert unheard.search(enc, enc_lengths, ctc_lp)[method][0] == plain
