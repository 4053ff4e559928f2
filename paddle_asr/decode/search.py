"""Search over CTC posteriors. Greedy search now; beam searches come with the attention decoder."""

from __future__ import annotations

import numpy as np


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
