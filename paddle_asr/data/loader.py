"""Training batches from utterances: audio, speed perturbation, fbank with dither, SpecAugment.

Every random draw of an utterance comes from a generator seeded by (seed, epoch, utterance id), so
what an utterance looks like in an epoch does not depend on which process, worker or batch loads
it, nor on whether the run was resumed: the condition for exact resume and for 1-process and
N-process training to see the same data.

With num_workers > 0, batches are loaded by a pool of worker processes a few batches ahead of
training, in order. With training.cache_features, the loader keeps each utterance's fbank from its
first epoch on (its dither drawn once, from the seed and the utterance id alone), so that an epoch's
features do not depend on whether the cache held them.
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from paddle_asr.config import ConcatConfig, FeatureConfig, SpecAugmentConfig, SpeedPerturbConfig, VoicePerturbConfig
from paddle_asr.data.audio import read_audio
from paddle_asr.data.augment import choose_speed, choose_voice, join_pairs, spec_augment, speed_perturb
from paddle_asr.data.dataset import Batch, collate
from paddle_asr.data.manifest import Utterance
from paddle_asr.data.sampler import utterance_frames
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.errors import AsrError
from paddle_asr.features import compute_fbank


@dataclass(frozen=True)
class TrainingInputs:
    tokenizer: CharTokenizer
    features: FeatureConfig
    spec_augment: SpecAugmentConfig
    speed_perturb: SpeedPerturbConfig
    seed: int
    concat: ConcatConfig = field(default_factory=ConcatConfig)
    max_frames: int = 0  # fbank frames of training.max_duration_s: joined pairs stay within it
    voice_perturb: VoicePerturbConfig = field(default_factory=VoicePerturbConfig)
    cache_features: bool = False


def utterance_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode("utf-8"))])


def utterance_features(waveform: np.ndarray, sample_rate: int, key: str, epoch: int,
                       inputs: TrainingInputs) -> np.ndarray:
    """One training utterance's fbank: speed perturbation, voice perturbation, dither and SpecAugment,
    drawn in that order from the utterance's own generator (data.shards relies on the speed being the
    first draw; with voice perturbation off, nothing is drawn for it)."""
    rng = utterance_rng(inputs.seed, epoch, key)
    if inputs.speed_perturb.enabled:
        waveform = speed_perturb(waveform, sample_rate, choose_speed(inputs.speed_perturb, rng))
    warp, envelope = choose_voice(inputs.voice_perturb, inputs.features.num_mel_bins, rng)
    fbank = compute_fbank(waveform, inputs.features, dither=inputs.features.dither, rng=rng, vtln_warp=warp)
    return _envelope_and_masks(fbank, envelope, inputs, rng)


def cached_fbank(waveform: np.ndarray, key: str, inputs: TrainingInputs) -> np.ndarray:
    """The fbank training.cache_features keeps for an utterance: dithered once, from a generator of
    the seed and the utterance id (no epoch), at the one warp the config allows."""
    rng = np.random.default_rng([inputs.seed, zlib.crc32(("fbank:" + key).encode("utf-8"))])
    warp = inputs.voice_perturb.min_warp if inputs.voice_perturb.enabled else 1.0
    return compute_fbank(waveform, inputs.features, dither=inputs.features.dither, rng=rng, vtln_warp=warp)


def features_from_cached(fbank: np.ndarray, key: str, epoch: int, inputs: TrainingInputs) -> np.ndarray:
    """An epoch's features of a cached utterance: the voice envelope and SpecAugment drawn from the
    utterance's generator for the epoch, as `utterance_features` draws them."""
    rng = utterance_rng(inputs.seed, epoch, key)
    _, envelope = choose_voice(inputs.voice_perturb, inputs.features.num_mel_bins, rng)
    return _envelope_and_masks(fbank, envelope, inputs, rng)


def _envelope_and_masks(fbank: np.ndarray, envelope: np.ndarray, inputs: TrainingInputs,
                        rng: np.random.Generator) -> np.ndarray:
    if inputs.voice_perturb.enabled and fbank.shape[0]:
        fbank = fbank + envelope[None, :]
    return spec_augment(fbank, inputs.spec_augment, rng)


def _read_training_audio(u: Utterance, inputs: TrainingInputs) -> tuple[np.ndarray, int]:
    try:
        waveform, rate = read_audio(Path(u.wav), expected_rate=inputs.features.sample_rate)
    except AsrError as e:
        raise AsrError(f"training utterance {u.key}: {e}. The audio changed after stage 0: restore it, or run "
                       "stage 0 again (--stage 0 --force true) so the manifests list only what is there") from None
    if not np.isfinite(waveform).all():
        raise AsrError(f"training utterance {u.key}: {u.wav} has NaN or infinite samples (it changed after "
                       "stage 0, which checks this): replace it, or run stage 0 again (--stage 0 --force true)")
    return waveform, rate


def load_training_batch(utts: list[Utterance], epoch: int, inputs: TrainingInputs,
                        cache: dict[str, np.ndarray] | None = None) -> Batch:
    """A batch's features; with a cache (training.cache_features), each utterance's fbank is taken
    from it, or computed once and put in it."""
    feats = []
    for u in utts:
        if cache is None:
            feats.append(utterance_features(*_read_training_audio(u, inputs), u.key, epoch, inputs))
            continue
        fbank = cache.get(u.key)
        if fbank is None:
            fbank = cache[u.key] = cached_fbank(_read_training_audio(u, inputs)[0], u.key, inputs)
        feats.append(features_from_cached(fbank, u.key, epoch, inputs))
    return training_batch(feats, [u.text for u in utts], [u.key for u in utts], epoch, inputs)


def training_batch(feats: list[np.ndarray], texts: list[str], keys: list[str], epoch: int,
                   inputs: TrainingInputs) -> Batch:
    """A training batch of utterances' features and transcripts; with probability concat.prob (a
    draw seeded by the epoch and the batch's first id) given as joined pairs."""
    labels = [inputs.tokenizer.encode(t)[0] for t in texts]
    if inputs.concat.prob > 0 and len(keys) > 1:
        rng = utterance_rng(inputs.seed, epoch, "concat:" + keys[0])
        if rng.random() < inputs.concat.prob:
            feats, labels, keys, texts = join_pairs(feats, labels, keys, texts, max_frames=inputs.max_frames, rng=rng)
    return collate(keys, feats, labels, texts)


def cache_size(utts: list[Utterance], features: FeatureConfig, processes: int = 1,
               memory_bytes: int | None = None) -> int:
    """Bytes the feature cache of `utts` will hold in all `processes` (each may come to hold every
    utterance: batches move between processes from epoch to epoch); an error when that is more than
    half of `memory_bytes` (default: this machine's memory), which leaves room for training."""
    frames = sum(utterance_frames(u, features) for u in utts)
    size = frames * features.num_mel_bins * 4 * processes
    memory = memory_bytes or os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if size > memory // 2:
        raise AsrError(f"training.cache_features would keep {size / 2**30:.1f} GiB of features of {len(utts)} "
                       f"utterances in memory ({processes} process(es)), more than half of this machine's "
                       f"{memory / 2**30:.1f} GiB: set training.cache_features: false")
    return size


_worker_inputs: TrainingInputs | None = None


def _init_worker(inputs: TrainingInputs) -> None:
    global _worker_inputs
    _worker_inputs = inputs


def _load_in_worker(task: tuple[list[Utterance], int]) -> Batch:
    return load_training_batch(task[0], task[1], _worker_inputs)


class BatchLoader:
    """Loads batches in order, in this process or in `num_workers` worker processes."""

    def __init__(self, inputs: TrainingInputs, num_workers: int = 0) -> None:
        self.inputs = inputs
        self.num_workers = num_workers
        self._pool = None
        # Utterance id -> fbank, when the config caches features (always in this process).
        self._cache: dict[str, np.ndarray] | None = {} if inputs.cache_features else None
        if inputs.cache_features and num_workers > 0:
            raise AsrError("training.cache_features keeps the features in the training process; "
                           f"set training.num_workers: 0 (got {num_workers})")
        if num_workers > 0:
            # fork: workers inherit the loaded modules and start at once; they only run NumPy
            # and the fbank extension, never Paddle.
            ctx = multiprocessing.get_context("fork")
            self._pool = ctx.Pool(num_workers, initializer=_init_worker, initargs=(inputs,))

    def batches(self, parts: list[list[Utterance]], epoch: int) -> Iterator[Batch]:
        if self._pool is None:
            for utts in parts:
                yield load_training_batch(utts, epoch, self.inputs, self._cache)
            return
        # A bounded window of batches in flight: Pool.imap would load the whole epoch ahead.
        todo = iter(parts)
        pending = deque(self._pool.apply_async(_load_in_worker, ((utts, epoch),))
                        for utts in islice(todo, 2 * self.num_workers))
        while pending:
            batch = pending.popleft().get()
            following = next(todo, None)
            if following is not None:
                pending.append(self._pool.apply_async(_load_in_worker, ((following, epoch),)))
            yield batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
