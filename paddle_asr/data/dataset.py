"""Utterances -> padded batches of (fbank, lengths, token ids), features computed on the fly.

Training batches come from length-sorted buckets whose order is shuffled every epoch with a
seeded generator, so padding stays small and a run is reproducible. Utterances the model cannot
take (too short or long, or more tokens than encoder frames, which makes CTC infinite) are
filtered before training, counted and reported by id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle_asr.config import FeatureConfig, SpecAugmentConfig
from paddle_asr.data.audio import read_audio
from paddle_asr.data.augment import spec_augment
from paddle_asr.data.manifest import Utterance
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.features import compute_fbank, num_frames

IGNORE_ID = -1  # label padding, as WeNet and PaddleSpeech pad targets


@dataclass
class Batch:
    keys: list[str]
    feats: np.ndarray  # [B, T, D] float32, zero padded
    feat_lengths: np.ndarray  # [B] int64
    labels: np.ndarray  # [B, L] int32, padded with IGNORE_ID
    label_lengths: np.ndarray  # [B] int64
    texts: list[str]


def filter_utterances(
    utts: list[Utterance],
    tokenizer: CharTokenizer,
    feat_conf: FeatureConfig,
    *,
    min_duration: float,
    max_duration: float,
    subsampled_frames,
    max_tokens: int = 0,
    max_output_input_ratio: float = 0.0,
    shortest_speed: float = 1.0,
    longest_speed: float = 1.0,
    max_encoder_frames: int | None = None,
) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Keep what the model can train on; return (kept, [(id, reason)]).

    With speed perturbation an utterance can become `shortest_speed` times faster (shorter) or
    `longest_speed` times slower: it must still fit CTC when shortest, and the limits when longest.
    `max_encoder_frames`: the most encoder frames the model can take (its positional encoding's
    length); longer utterances would fail inside Paddle.
    """
    kept, dropped = [], []
    for u in utts:
        ids = tokenizer.encode(u.text)[0]
        tokens = len(ids)
        # CTC puts a blank between two equal tokens: "好好" needs 3 frames. Paddle's CTC loss is 0,
        # not infinite, for an alignment that cannot exist, so such an utterance would teach nothing.
        ctc_frames = tokens + sum(a == b for a, b in zip(ids, ids[1:]))
        shortest = num_frames(int(round(u.duration / shortest_speed * feat_conf.sample_rate)), feat_conf)
        if u.duration < min_duration:
            reason = f"{u.duration:.2f} s is shorter than min_duration_s={min_duration}"
        elif u.duration / longest_speed > max_duration:
            reason = f"{u.duration / longest_speed:.2f} s is longer than max_duration_s={max_duration}"
        elif max_tokens and tokens > max_tokens:
            reason = f"{tokens} tokens, more than max_tokens={max_tokens}"
        elif max_output_input_ratio and tokens / max(shortest, 1) > max_output_input_ratio:
            reason = (f"{tokens / max(shortest, 1):.3f} tokens per frame, "
                      f"above max_output_input_ratio={max_output_input_ratio}")
        elif ctc_frames > subsampled_frames(shortest):
            repeats = f" ({ctc_frames - tokens} repeated, each needing a blank between)" if ctc_frames > tokens else ""
            reason = (f"{tokens} tokens{repeats} but only {subsampled_frames(shortest)} encoder frames "
                      "(CTC cannot align)")
        elif max_encoder_frames and subsampled_frames(longest := num_frames(
                int(round(u.duration / longest_speed * feat_conf.sample_rate)), feat_conf)) > max_encoder_frames:
            reason = (f"{subsampled_frames(longest)} encoder frames, more than the {max_encoder_frames} the model's "
                      "positional encoding holds (lower max_duration_s)")
        else:
            kept.append(u)
            continue
        dropped.append((u.key, reason))
    return kept, dropped


def make_batches(utts: list[Utterance], batch_size: int) -> list[list[Utterance]]:
    """Consecutive groups of the duration-sorted list: similar lengths, little padding."""
    ordered = sorted(utts, key=lambda u: (u.duration, u.key))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def load_features(
    utt: Utterance,
    feat_conf: FeatureConfig,
    *,
    train: bool = False,
    spec_conf: SpecAugmentConfig | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    waveform, _ = read_audio(Path(utt.wav), expected_rate=feat_conf.sample_rate)
    dither = feat_conf.dither if train else 0.0
    feats = compute_fbank(waveform, feat_conf, dither=dither, rng=rng)
    if train and spec_conf is not None and rng is not None:
        feats = spec_augment(feats, spec_conf, rng)
    return feats


def collate(keys: list[str], feats: list[np.ndarray], labels: list[list[int]], texts: list[str]) -> Batch:
    dim = feats[0].shape[1]
    max_t = max(f.shape[0] for f in feats)
    padded = np.zeros((len(feats), max_t, dim), dtype=np.float32)
    for i, f in enumerate(feats):
        padded[i, : f.shape[0]] = f
    max_l = max(1, max(len(lab) for lab in labels))
    lab = np.full((len(labels), max_l), IGNORE_ID, dtype=np.int32)
    for i, ids in enumerate(labels):
        lab[i, : len(ids)] = ids
    return Batch(
        keys,
        padded,
        np.array([f.shape[0] for f in feats], dtype=np.int64),
        lab,
        np.array([len(ids) for ids in labels], dtype=np.int64),
        texts,
    )


def iterate_batches(
    batches: list[list[Utterance]],
    tokenizer: CharTokenizer,
    feat_conf: FeatureConfig,
    *,
    train: bool,
    spec_conf: SpecAugmentConfig | None = None,
    rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """Yield batches in the given order (the caller shuffles the order per epoch)."""
    for group in batches:
        feats = [load_features(u, feat_conf, train=train, spec_conf=spec_conf, rng=rng) for u in group]
        labels = [tokenizer.encode(u.text)[0] for u in group]
        yield collate([u.key for u in group], feats, labels, [u.text for u in group])
