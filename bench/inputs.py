"""Benchmark inputs shared by our benchmarks and the PaddleSpeech peer, so both time the same batches."""

from __future__ import annotations

import numpy as np

AISHELL_UNITS = 4233  # AISHELL-1's character units: 4230 characters + blank/unk/eos


def random_batch(batch: int, frames: int, dim: int, vocab: int, tokens: int, seed: int = 0):
    """(feats [B, T, D], feat_lengths, labels [B, U], label_lengths): full-length utterances."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, frames, dim)).astype(np.float32)
    feat_lengths = np.full(batch, frames, np.int64)
    labels = rng.integers(2, vocab - 1, (batch, tokens)).astype(np.int64)
    label_lengths = np.full(batch, tokens, np.int64)
    return feats, feat_lengths, labels, label_lengths
