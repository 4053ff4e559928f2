"""The four U2 decoding methods over any acoustic backend (dynamic graph or exported programs).

A backend exposes the runtime functions of a U2 model on NumPy arrays (`Backend` below). Every
method of one batch shares one encoder pass: CTC greedy and prefix beam search read the CTC
log-probs, attention rescoring re-scores the prefix-beam n-best with the decoder, and attention
beam search runs the decoder step by step. Because the dynamic-graph and exported backends run the
same search code, their hypotheses can be compared one to one (stage 5).

Streaming (decoding_chunk_size > 0): `encode_streaming_batch` runs the encoder chunk by chunk through
the backend's `encode_chunks` with per-stream states, the batch's utterances side by side as a
streaming server runs concurrent streams; the searches then run on the streamed encoder output.
Outputs equal each utterance streamed alone (`encode_streaming`) but on ONNX Runtime's INT8 files,
whose dynamic quantization scales each call's activations over all of its rows.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from paddle_asr.config import DecodeConfig, DecodeMethod, check_config
from paddle_asr.decode.attention_steps import attention_step
from paddle_asr.decode.context_graph import ContextGraph
from paddle_asr.decode.search import (
    attention_beam_search,
    attention_rescoring,
    ctc_greedy_search,
    ctc_prefix_beam_search_batch,
    pad_hypotheses,
)
from paddle_asr.errors import AsrError

METHODS = typing.get_args(DecodeMethod)
DECODER_METHODS = ("attention", "attention_rescoring")  # need a model with an attention decoder


class Backend(Protocol):
    sos: int | None
    eos: int | None
    subsampling_rate: int
    right_context: int
    supports_streaming: bool
    has_decoder: bool  # False: a CTC-only model (DeepSpeech2), only the CTC methods apply
    # A right-to-left decoder beside the left-to-right one (U2++, `decode_bidirectional`), and
    # the weight attention rescoring gives it unless the decode config sets one (0 without it).
    bidirectional: bool
    reverse_weight: float
    # Whether attention search should leave utterances whose beams all ended out of the decoder
    # call: fewer rows, but a new input shape at every step (costly where kernels are built per shape).
    skip_finished: bool

    def encode(self, feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """feats [B, T, D], lengths [B] -> encoder_out [B, T', d], lengths [B], CTC log-probs [B, T', V]."""

    def new_stream_state(self) -> object:
        """A fresh per-stream encoder state (U2: offset 0, empty attention cache, zero conv cache;
        DeepSpeech2: zero recurrent states). Opaque to callers. AsrError when the model cannot stream."""

    def encode_chunks(self, xs: np.ndarray, states: list, required_cache_size: int) -> tuple[np.ndarray, list]:
        """B streams' next chunk windows at once: xs [B, W, D] raw fbank (the same W for all; a
        stream's shorter last window comes with B == 1), states: the B streams' states ->
        (encoder_out [B, t', d], the B new states). required_cache_size = chunk_size *
        num_left_chunks (< 0: keep all): the attention frames each stream keeps (U2; an RNN's
        state is fixed-size and ignores it)."""

    def ctc_activation(self, encoder_out: np.ndarray) -> np.ndarray: ...

    def decode(self, hyps: np.ndarray, hyps_lengths: np.ndarray, encoder_out: np.ndarray,
               encoder_lengths: np.ndarray) -> np.ndarray:
        """Decoder log-probs [N, U, V] for `<sos> tokens` rows; encoder_out holds B utterances and
        N is a multiple of B, rows grouped by utterance. A bidirectional model's left-to-right ones."""

    def decode_bidirectional(self, hyps: np.ndarray, hyps_lengths: np.ndarray, encoder_out: np.ndarray,
                             encoder_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As `decode`, with the right-to-left decoder's log-probs [N, U, V] for the same rows
        (`U2Model.forward_attention_decoder`); only when `bidirectional`."""

    # (layers, heads, 2*d_k) of `decode_step`'s cache; None where there is no step program (a bundle
    # exported before it, a CTC-only model): attention search then runs `decode` on whole prefixes.
    decoder_step_cache: tuple[int, int, int] | None

    def decode_step(self, tokens: np.ndarray, att_cache: np.ndarray, encoder_out: np.ndarray,
                    encoder_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Incremental decoding (`U2Model.forward_decoder_step`): tokens [N, 1], the keys and values
        of the rows' earlier positions [L, N, H, C, 2*d_k] after one padding entry -> the next
        token's log-probs [N, V] (left-to-right decoder) and the new keys and values [L, N, H, 1, 2*d_k]."""


def validate_decode_config(conf: DecodeConfig, backend: Backend, source: str = "decode config") -> None:
    check_config(conf, source)  # the values load_decode_config checks, for a DecodeConfig built in code
    if not backend.has_decoder and any(m in DECODER_METHODS for m in conf.methods):
        raise AsrError(f"{source}: {', '.join(m for m in conf.methods if m in DECODER_METHODS)} need an attention "
                       "decoder, which this model (CTC only) lacks; use ctc_greedy_search, ctc_prefix_beam_search or "
                       "ctc_beam_search_lm")
    if conf.reverse_weight and not backend.bidirectional:
        raise AsrError(f"{source}: reverse_weight {conf.reverse_weight} weighs a right-to-left decoder, which this "
                       "model lacks (it needs model.decoder.type bitransformer, U2++); drop reverse_weight or set it "
                       "to 0")
    if "ctc_beam_search_lm" in conf.methods:
        if not conf.lm_path:
            raise AsrError(f"{source}: ctc_beam_search_lm needs lm_path (an ARPA or KenLM file; stage 0 builds "
                           "data/lm/char_<N>gram.arpa)")
        if not Path(conf.lm_path).is_file():
            raise AsrError(f"{source}: lm_path {conf.lm_path} does not exist; run stage 0 (it builds the LM) or "
                           "point lm_path at an existing LM")
    if conf.decoding_chunk_size > 0 and not backend.supports_streaming:
        raise AsrError(f"{source}: decoding_chunk_size {conf.decoding_chunk_size} needs a streaming model "
                       "(trained with use_dynamic_chunk and causal convolutions, e.g. chunk_conformer.yaml); "
                       "use decoding_chunk_size: -1 for this model")


def chunk_windows(num_frames: int, subsampling_rate: int, right_context: int, chunk_size: int) -> list[tuple[int, int]]:
    """Feature-frame windows [start, end) of the streaming chunks of a `num_frames` utterance.

    Each chunk takes (chunk-1)*subsampling + right_context + 1 feature frames and advances by
    chunk*subsampling (PaddleSpeech/WeNet `forward_chunk_by_chunk`); the subsampling convolutions
    see overlapping windows instead of keeping a cache of their own. The last window may be shorter.
    """
    context = right_context + 1
    stride, window = subsampling_rate * chunk_size, (chunk_size - 1) * subsampling_rate + context
    return [(cur, min(cur + window, num_frames)) for cur in range(0, num_frames - context + 1, stride)]


def encode_streaming(backend: Backend, feats: np.ndarray, chunk_size: int, num_left_chunks: int) -> np.ndarray:
    """One utterance [T, D] through the streaming encoder chunk by chunk (`chunk_windows`), one
    stream (B == 1) through `encode_chunks`, exactly as a streaming server runs it ->
    encoder_out [1, T', d]."""
    return encode_streaming_batch(backend, [feats], chunk_size, num_left_chunks)[0]


def encode_streaming_batch(backend: Backend, utterances: list[np.ndarray], chunk_size: int,
                           num_left_chunks: int) -> list[np.ndarray]:
    """Utterances [T_i, D] through the streaming encoder chunk by chunk, as `encode_streaming` runs
    each: their k-th windows go through `encode_chunks` together, one call per window length (all
    but the last windows are full), as a server batches concurrent streams -> [1, T'_i, d] each."""
    if chunk_size < 1:
        raise AsrError(f"chunk_size must be a positive number of encoder frames, got {chunk_size}")
    utterances = [np.asarray(u, np.float32) for u in utterances]
    windows = [chunk_windows(u.shape[0], backend.subsampling_rate, backend.right_context, chunk_size)
               for u in utterances]
    if not all(windows):
        short = min(u.shape[0] for u in utterances)
        raise AsrError(f"{short} frames are fewer than the {backend.right_context + 1} one encoder frame needs")
    required = chunk_size * num_left_chunks if num_left_chunks >= 0 else -1
    states = [backend.new_stream_state() for _ in utterances]
    outputs: list[list[np.ndarray]] = [[] for _ in utterances]
    for k in range(max(len(w) for w in windows)):
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            if k < len(w):
                by_length.setdefault(w[k][1] - w[k][0], []).append(i)
        for rows in by_length.values():
            xs = np.stack([utterances[i][slice(*windows[i][k])] for i in rows])
            y, new_states = backend.encode_chunks(xs, [states[i] for i in rows], required)
            for j, i in enumerate(rows):
                outputs[i].append(y[j: j + 1])
                states[i] = new_states[j]
    return [np.concatenate(o, axis=1) for o in outputs]


class Recognizer:
    """Decode batches with every method of a DecodeConfig; times each part for real-time factors.

    `vocab` (the unit strings, index = token id) is needed by ctc_beam_search_lm: the LM scores units.
    `context` (hotwords, `context_graph.context_graph_for(conf, tokenizer)`) biases the prefix beam
    search, and so attention rescoring, which re-ranks its n-best.
    """

    def __init__(self, backend: Backend, conf: DecodeConfig, vocab: list[str] | None = None,
                 context: ContextGraph | None = None) -> None:
        validate_decode_config(conf, backend)
        self.backend, self.conf, self.context = backend, conf, context
        self.reverse_weight = backend.reverse_weight if conf.reverse_weight is None else conf.reverse_weight
        self.seconds: dict[str, float] = {"encoder": 0.0, **{m: 0.0 for m in conf.methods}}
        self.lm, self.vocab, self.lm_cache = None, vocab, {}
        if "ctc_beam_search_lm" in conf.methods:
            from paddle_asr.lm.scorer import load_language_model

            if vocab is None:
                raise AsrError("ctc_beam_search_lm needs the model's units (vocab)")
            self.lm = load_language_model(Path(conf.lm_path))

    def _encode(self, feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.conf
        if c.decoding_chunk_size < 0:
            return self.backend.encode(feats, lengths)
        outs = encode_streaming_batch(self.backend, [feats[i, :n] for i, n in enumerate(lengths)],
                                      c.decoding_chunk_size, c.num_decoding_left_chunks)
        enc_lengths = np.asarray([o.shape[1] for o in outs], np.int64)
        enc = np.zeros((len(outs), int(enc_lengths.max()), outs[0].shape[2]), np.float32)
        for i, o in enumerate(outs):
            enc[i, : o.shape[1]] = o[0]
        return enc, enc_lengths, self.backend.ctc_activation(enc)

    def _timed(self, key: str, fn: Callable):
        t = time.perf_counter()
        result = fn()
        self.seconds[key] += time.perf_counter() - t
        return result

    def recognize(self, feats: np.ndarray, lengths: np.ndarray) -> dict[str, list[list[int]]]:
        """feats [B, T, D], lengths [B] -> {method: [token ids per utterance]}."""
        return self.recognize_with_ctc(feats, lengths)[0]

    def recognize_with_ctc(self, feats: np.ndarray, lengths: np.ndarray
                           ) -> tuple[dict[str, list[list[int]]], np.ndarray, np.ndarray]:
        """As `recognize`, plus the CTC log-probs [B, T', V] and encoder lengths [B] the searches
        read (for token times by forced alignment)."""
        enc, enc_lengths, ctc_lp = self.encode(feats, lengths)
        return self.search(enc, enc_lengths, ctc_lp), ctc_lp, enc_lengths

    def encode(self, feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shared encoder pass (timed): encoder_out [B, T', d], lengths [B], CTC log-probs [B, T', V]."""
        return self._timed("encoder", lambda: self._encode(feats, lengths))

    def search(self, enc: np.ndarray, enc_lengths: np.ndarray, ctc_lp: np.ndarray) -> dict[str, list[list[int]]]:
        """{method: [token ids per utterance]} of every method on one batch's encoder output."""
        c = self.conf
        results: dict[str, list[list[int]]] = {}
        shared: dict = {}  # the prefix-beam n-best, used by two methods, searched once

        def prefix_nbest():
            if "nbest" not in shared:
                t = time.perf_counter()
                shared["nbest"] = ctc_prefix_beam_search_batch(ctc_lp, enc_lengths, c.beam_size,
                                                               context=self.context)
                shared["seconds"] = time.perf_counter() - t
            return shared["nbest"]

        for method in c.methods:
            had_nbest = "nbest" in shared
            t = time.perf_counter()
            if method == "ctc_greedy_search":
                results[method] = ctc_greedy_search(ctc_lp, enc_lengths)
            elif method == "ctc_prefix_beam_search":
                results[method] = [n[0][0] for n in prefix_nbest()]
            elif method == "ctc_beam_search_lm":
                from paddle_asr.decode.lm_search import ctc_beam_search_with_lm_batch

                nbest = ctc_beam_search_with_lm_batch(
                    ctc_lp, enc_lengths, self.vocab, self.lm, alpha=c.alpha, beta=c.beta, beam_size=c.beam_size,
                    cutoff_prob=c.cutoff_prob, cutoff_top_n=c.cutoff_top_n or None, cache=self.lm_cache)
                results[method] = [n[0][0] if n else [] for n in nbest]
            elif method == "attention_rescoring":
                results[method] = self.rescore(prefix_nbest(), enc, enc_lengths)
            else:
                limit = enc_lengths
                if c.attention_length_ratio > 0:
                    greedy = results.get("ctc_greedy_search") or ctc_greedy_search(ctc_lp, enc_lengths)
                    cap = np.asarray([int(np.ceil(c.attention_length_ratio * len(h))) + 2 for h in greedy])
                    limit = np.minimum(enc_lengths, cap)
                results[method] = self._attention(enc, enc_lengths, limit)
            elapsed = time.perf_counter() - t
            if had_nbest and method in ("ctc_prefix_beam_search", "attention_rescoring"):
                elapsed += shared["seconds"]  # each method alone would have run the search
            self.seconds[method] += elapsed
        return results

    def rescore(self, nbest: list, enc: np.ndarray, enc_lengths: np.ndarray) -> list[list[int]]:
        """One decoder call for the n-best of every utterance in the batch: each utterance's list is
        padded to beam_size rows (the decoder reads N/B hypotheses per utterance). With a
        reverse_weight, the right-to-left decoder scores them too (U2++)."""
        beam = self.conf.beam_size
        rows = [hyp for cands in nbest for hyp, _ in (cands + [cands[0]] * (beam - len(cands)))]
        hyps_in, hyps_lengths = pad_hypotheses(rows, self.backend.sos, self.backend.eos)
        if self.reverse_weight > 0:
            log_probs, r_log_probs = self.backend.decode_bidirectional(hyps_in, hyps_lengths, enc, enc_lengths)
        else:
            log_probs, r_log_probs = self.backend.decode(hyps_in, hyps_lengths, enc, enc_lengths), None
        best = []
        for i, cands in enumerate(nbest):
            rows_i = slice(i * beam, i * beam + len(cands))
            idx, _ = attention_rescoring(cands, log_probs[rows_i], self.backend.eos, self.conf.ctc_weight,
                                         None if r_log_probs is None else r_log_probs[rows_i], self.reverse_weight)
            best.append(cands[idx][0])
        return best

    def _attention(self, enc: np.ndarray, enc_lengths: np.ndarray, max_lengths: np.ndarray) -> list[list[int]]:
        step = attention_step(self.backend, enc, enc_lengths, self.conf.beam_size)
        found = attention_beam_search(step, len(enc), self.conf.beam_size, self.backend.sos, self.backend.eos,
                                      [int(n) for n in max_lengths], reorder=step.reorder)
        return [hyp for hyp, _ in found]
