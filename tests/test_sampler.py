"""Training batches (static and dynamic, split over processes) and the loader (workers and
per-utterance randomness), on the generated tiny corpus."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from paddle_asr.config import (
    ConcatConfig,
    FeatureConfig,
    SpecAugmentConfig,
    SpeedPerturbConfig,
    VoicePerturbConfig,
)
from paddle_asr.data.audio import read_audio
from paddle_asr.data.loader import (
    BatchLoader,
    TrainingInputs,
    cache_size,
    cached_fbank,
    features_from_cached,
    load_training_batch,
)
from paddle_asr.data.manifest import Utterance, read_manifest
from paddle_asr.data.sampler import epoch_order, plan_batches, rank_part, utterance_frames
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.errors import AsrError
from paddle_asr.features import compute_fbank

FEATS = FeatureConfig()


def fake(n: int, seconds=lambda i: 1.0 + 0.1 * i) -> list[Utterance]:
    return [Utterance(f"u{i:02d}", f"/nowhere/u{i:02d}.wav", seconds(i), "字") for i in range(n)]


def test_static_batches_are_global_and_split_evenly_by_rank():
    utts = fake(10)
    one = plan_batches(utts, FEATS, batch_size=4, world_size=1).batches
    two = plan_batches(utts, FEATS, batch_size=2, world_size=2).batches
    assert one == two and [len(b) for b in one] == [4, 4, 2]
    for batch in two:
        parts = [rank_part(batch, r, 2) for r in range(2)]
        assert sorted(u.key for p in parts for u in p) == sorted(u.key for u in batch)
        assert len(parts[0]) == len(parts[1])  # same number of steps: no rank waits for another
    assert all(b[i].duration <= b[i + 1].duration for b in one for i in range(len(b) - 1))


def test_a_tail_too_small_for_every_rank_joins_the_batch_before():
    plan = plan_batches(fake(9), FEATS, batch_size=4, world_size=2)
    assert plan.merged_tail and [len(b) for b in plan.batches] == [9]
    plan = plan_batches(fake(17), FEATS, batch_size=2, world_size=2)
    assert plan.merged_tail and [len(b) for b in plan.batches] == [4, 4, 4, 5]
    with pytest.raises(AsrError, match="cannot feed 4 processes"):
        plan_batches(fake(3), FEATS, batch_size=1, world_size=4)


def test_dynamic_batches_respect_the_padded_frame_budget():
    utts = fake(40, seconds=lambda i: 0.5 + 0.15 * i)
    budget = 2000
    plan = plan_batches(utts, FEATS, batch_size=0, max_frames_in_batch=budget)
    assert sorted(u.key for b in plan.batches for u in b) == sorted(u.key for u in utts)
    for b in plan.batches:
        assert max(utterance_frames(u, FEATS) for u in b) * len(b) <= budget
    sizes = [len(b) for b in plan.batches]
    assert sizes[0] > sizes[-1]  # short utterances pack more per batch
    # Two processes: twice the budget per global batch, the same budget per process.
    two = plan_batches(utts, FEATS, batch_size=0, max_frames_in_batch=budget, world_size=2)
    for b in two.batches:
        for r in range(2):
            part = rank_part(b, r, 2)
            assert max(utterance_frames(u, FEATS) for u in part) * len(part) <= budget
    # With speed perturbation 0.9 an utterance can be 1/0.9 times longer: the budget holds for that.
    slow = plan_batches(utts, FEATS, batch_size=0, max_frames_in_batch=budget, slowest_speed=0.9)
    for b in slow.batches:
        assert max(utterance_frames(u, FEATS, 0.9) for u in b) * len(b) <= budget
    expected = r"9 utterance\(s\) have more frames than training.max_frames_in_batch=500: u31 \(513\)"
    with pytest.raises(AsrError, match=expected):
        plan_batches(utts, FEATS, batch_size=0, max_frames_in_batch=500)


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    assert not np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 2, 3))
    assert sorted(epoch_order(50, 1, 3)) == list(range(50))


@pytest.fixture(scope="module")
def tiny_inputs(tiny_recipe):
    utts = read_manifest(tiny_recipe / "data/train/data.list")
    tokenizer = CharTokenizer.from_file(tiny_recipe / "data/lang_char/vocab.txt")
    return utts, tokenizer


def test_workers_load_the_same_batches_as_the_training_process(tiny_inputs):
    utts, tokenizer = tiny_inputs
    inputs = TrainingInputs(tokenizer, FeatureConfig(), SpecAugmentConfig(max_w=5),
                            SpeedPerturbConfig(enabled=True), seed=3)
    parts = [utts[i: i + 3] for i in range(0, 12, 3)]
    with BatchLoader(inputs, 0) as here, BatchLoader(inputs, 2) as pool:
        a, b = list(here.batches(parts, epoch=2)), list(pool.batches(parts, epoch=2))
    assert [x.keys for x in a] == [x.keys for x in b] == [[u.key for u in p] for p in parts]
    for x, y in zip(a, b):
        assert np.array_equal(x.feats, y.feats) and np.array_equal(x.labels, y.labels)


def test_an_utterance_looks_the_same_in_any_batch_but_differs_across_epochs(tiny_inputs):
    """The randomness (speed, dither, masks) is keyed by (seed, epoch, utterance id)."""
    utts, tokenizer = tiny_inputs
    inputs = TrainingInputs(tokenizer, FeatureConfig(), SpecAugmentConfig(), SpeedPerturbConfig(enabled=True), seed=3)
    alone = load_training_batch([utts[0]], 1, inputs)
    with_others = load_training_batch([utts[5], utts[0]], 1, inputs)
    n = alone.feat_lengths[0]
    assert with_others.feat_lengths[1] == n and np.array_equal(with_others.feats[1, :n], alone.feats[0, :n])
    lengths = {int(load_training_batch([utts[0]], epoch, inputs).feat_lengths[0]) for epoch in range(1, 13)}
    assert len(lengths) == 3  # speeds 0.9, 1.0 and 1.1 all occur over the epochs
    plain = TrainingInputs(tokenizer, FeatureConfig(dither=0.0), SpecAugmentConfig(enabled=False),
                           SpeedPerturbConfig(), 3)
    assert load_training_batch([utts[0]], 1, plain).feat_lengths[0] in lengths


def _plain(tokenizer, seed: int = 3, **kwargs) -> TrainingInputs:
    return TrainingInputs(tokenizer, FeatureConfig(dither=0.0), SpecAugmentConfig(enabled=False),
                          SpeedPerturbConfig(), seed, **kwargs)


def test_concatenation_joins_neighbours_end_to_end_in_some_batches_of_an_epoch(tiny_inputs):
    utts, tokenizer = tiny_inputs
    five = utts[:5]
    alone = {u.key: load_training_batch([u], 1, _plain(tokenizer)) for u in five}
    joined_inputs = _plain(tokenizer, concat=ConcatConfig(prob=1.0), max_frames=10**6)
    batch = load_training_batch(five, 1, joined_inputs)
    assert len(batch.keys) == 3 and batch.keys[2] == five[4].key  # two pairs and the odd one out
    for i, key in enumerate(batch.keys):
        parts = [alone[k] for k in key.split("+")]
        feats = np.concatenate([p.feats[0, : p.feat_lengths[0]] for p in parts])
        labels = [t for p in parts for t in p.labels[0, : p.label_lengths[0]]]
        assert batch.feat_lengths[i] == len(feats) and np.array_equal(batch.feats[i, : len(feats)], feats)
        assert batch.label_lengths[i] == len(labels) and list(batch.labels[i, : len(labels)]) == labels
        assert batch.texts[i] == " ".join(p.texts[0] for p in parts)
    assert {k for key in batch.keys for k in key.split("+")} == {u.key for u in five}
    # Which batches are joined, and in which order, changes with the epoch; prob 0 never joins.
    half = _plain(tokenizer, concat=ConcatConfig(prob=0.5), max_frames=10**6)
    joined = [len(load_training_batch(five, epoch, half).keys) < 5 for epoch in range(1, 21)]
    assert 0 < sum(joined) < 20
    orders = {tuple(load_training_batch(five, epoch, joined_inputs).keys) for epoch in range(1, 9)}
    assert len(orders) > 1
    assert load_training_batch(five, 1, _plain(tokenizer)).keys == [u.key for u in five]


def test_a_pair_longer_than_the_bound_stays_two_utterances(tiny_inputs):
    utts, tokenizer = tiny_inputs
    two = utts[:2]
    lengths = [int(load_training_batch([u], 1, _plain(tokenizer)).feat_lengths[0]) for u in two]
    tight = _plain(tokenizer, concat=ConcatConfig(prob=1.0), max_frames=sum(lengths) - 1)
    assert load_training_batch(two, 1, tight).keys == [u.key for u in two]
    fits = _plain(tokenizer, concat=ConcatConfig(prob=1.0), max_frames=sum(lengths))
    assert len(load_training_batch(two, 1, fits).keys) == 1


def _cached_inputs(tokenizer) -> TrainingInputs:
    # Dither, the voice envelope with the high cut and SpecAugment on: every per-epoch draw happens.
    voice = VoicePerturbConfig(enabled=True, min_warp=1.0, max_warp=1.0, envelope_db=8.0, high_cut_db=25.0)
    return TrainingInputs(tokenizer, FeatureConfig(dither=0.1), SpecAugmentConfig(), SpeedPerturbConfig(), seed=3,
                          voice_perturb=voice, cache_features=True)


def test_cached_features_do_not_depend_on_the_cache_and_later_epochs_read_no_audio(tiny_inputs):
    """What exact resume and data-parallel training need: an epoch's features are the same whether
    the cache held them (a long run) or not (a resumed one); from the second epoch on, no audio is read."""
    utts, tokenizer = tiny_inputs
    inputs = _cached_inputs(tokenizer)
    parts = [utts[i: i + 3] for i in range(0, 9, 3)]
    gone = [[dataclasses.replace(u, wav="/nowhere/" + u.key + ".wav") for u in p] for p in parts]
    with BatchLoader(inputs, 0) as warm, BatchLoader(inputs, 0) as cold:
        first = list(warm.batches(parts, epoch=1))
        later = list(warm.batches(gone, epoch=3))  # from the cache: the audio paths lead nowhere
        fresh = list(cold.batches(parts, epoch=3))
        with pytest.raises(AsrError, match="training utterance .*: .*nowhere"):
            list(BatchLoader(inputs, 0).batches(gone, epoch=3))
    for x, y, z in zip(later, fresh, first):
        assert np.array_equal(x.feats, y.feats) and x.keys == y.keys
        assert not np.array_equal(x.feats, z.feats)  # envelope and masks drawn anew each epoch
    # Under the draws lies one fbank per utterance: dithered once, from the seed and the id.
    u = utts[0]
    waveform, _ = read_audio(Path(u.wav))
    base = cached_fbank(waveform, u.key, inputs)
    np.testing.assert_array_equal(base, cached_fbank(waveform, u.key, inputs))
    np.testing.assert_array_equal(first[0].feats[0, :len(base)], features_from_cached(base, u.key, 1, inputs))
    undithered = compute_fbank(waveform, inputs.features)
    assert 0 < np.abs(base - undithered).max() < 1.0


def test_a_feature_cache_in_worker_processes_or_beyond_half_the_memory_is_refused(tiny_inputs):
    utts, tokenizer = tiny_inputs
    with pytest.raises(AsrError, match="keeps the features in the training process; set training.num_workers: 0"):
        BatchLoader(_cached_inputs(tokenizer), 2)
    frames = sum(utterance_frames(u, FEATS) for u in utts)
    size = cache_size(utts, FEATS, processes=2, memory_bytes=4 * frames * 80 * 4)
    assert size == frames * 80 * 4 * 2
    with pytest.raises(AsrError, match=rf"would keep .* of {len(utts)} utterances in memory \(2 process\(es\)\), "
                                       "more than half .*set training.cache_features: false"):
        cache_size(utts, FEATS, processes=2, memory_bytes=4 * frames * 80 * 4 - 1)
