"""What attention beam search (`search.attention_beam_search`) runs on a backend at each step.

- `PrefixStep`: the decoder over each row's whole prefix, the last position read (`Backend.decode`).
  Step i costs i positions of decoder work.
- `IncrementalStep`: the decoder over each row's newest token alone (`Backend.decode_step`), the
  earlier positions' self-attention keys and values kept in a cache that follows the beams as
  they are re-selected (WeNet's fixed `forward_one_step`, wenet-e2e/wenet#1635). Step i costs one
  position. The backends offer it where the model or bundle has the step program
  (`Backend.decoder_step_cache`); bundles exported before it fall back to `PrefixStep`.

Both compute only the utterances that still have a live beam (when the backend's `skip_finished`
says fewer rows pay) and give the rows of finished utterances filler log-probs, which the search
ignores (finished rows keep score 0 and emit <eos>).
"""

from __future__ import annotations

import numpy as np


class PrefixStep:
    def __init__(self, backend, enc: np.ndarray, enc_lengths: np.ndarray, beam: int) -> None:
        self.backend, self.enc, self.enc_lengths, self.beam = backend, enc, enc_lengths, beam
        self._filler: np.ndarray | None = None

    def _live_rows(self, hyps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(utterances with a live beam, their rows)."""
        live = np.arange(len(self.enc))
        if hyps.shape[1] > 1 and self.backend.skip_finished:
            ended = hyps[:, -1] == self.backend.eos
            live = np.flatnonzero(~ended.reshape(-1, self.beam).all(axis=1))
        return live, (live[:, None] * self.beam + np.arange(self.beam)).reshape(-1)

    def _fill(self, n: int, rows: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
        if len(rows) == n:
            return log_probs
        if self._filler is None:  # distinct values: no ties for top-k to sort out in dead rows
            self._filler = -np.arange(log_probs.shape[1], dtype=np.float32)
        out = np.broadcast_to(self._filler, (n, log_probs.shape[1])).copy()
        out[rows] = log_probs
        return out

    def __call__(self, hyps: np.ndarray) -> np.ndarray:
        n, i = hyps.shape
        live, rows = self._live_rows(hyps)
        lengths = np.full(len(rows), i, np.int64)
        log_probs = self.backend.decode(hyps[rows], lengths, self.enc[live], self.enc_lengths[live])[:, i - 1]
        return self._fill(n, rows, log_probs)

    def reorder(self, parents: np.ndarray) -> None:
        """Nothing to reorder: every step reads the whole prefix."""


class IncrementalStep(PrefixStep):
    def __init__(self, backend, enc: np.ndarray, enc_lengths: np.ndarray, beam: int) -> None:
        super().__init__(backend, enc, enc_lengths, beam)
        layers, heads, width = backend.decoder_step_cache
        # Entry 0 of the position axis is padding the step program masks out (no empty tensors).
        self.cache = np.zeros((layers, len(enc) * beam, heads, 1, width), np.float32)

    def __call__(self, hyps: np.ndarray) -> np.ndarray:
        n = len(hyps)
        live, rows = self._live_rows(hyps)
        cache = self.cache if len(rows) == n else self.cache[:, rows]
        log_probs, kv = self.backend.decode_step(hyps[rows, -1:], cache, self.enc[live], self.enc_lengths[live])
        if len(rows) < n:  # finished rows never read their cache again
            full = np.zeros((kv.shape[0], n, *kv.shape[2:]), np.float32)
            full[:, rows] = kv
            kv = full
        self.cache = np.concatenate([self.cache, kv], axis=3)
        return self._fill(n, rows, log_probs)

    def reorder(self, parents: np.ndarray) -> None:
        """Each new row continues the prefix of row parents[row]: its keys and values come along."""
        self.cache = self.cache[:, parents]


def attention_step(backend, enc: np.ndarray, enc_lengths: np.ndarray, beam: int) -> PrefixStep:
    """The incremental step where the backend has a step program, else the whole-prefix one."""
    cls = IncrementalStep if backend.decoder_step_cache else PrefixStep
    return cls(backend, enc, enc_lengths, beam)
