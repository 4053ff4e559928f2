"""Tar shards: writing, checked sequential reading, and the shuffle/sort/batch pipeline over them."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from paddle_asr.cli import main
from paddle_asr.config import FeatureConfig, SpecAugmentConfig, SpeedPerturbConfig
from paddle_asr.data.audio import read_audio
from paddle_asr.data.augment import speed_perturb
from paddle_asr.data.loader import TrainingInputs, load_training_batch
from paddle_asr.data.manifest import read_manifest
from paddle_asr.data.shards import (
    SHARD_LIST,
    perturbed_samples,
    read_shard,
    read_shard_list,
    shard_batches,
    write_shards,
)
from paddle_asr.data.tokenizer import CharTokenizer
from paddle_asr.errors import AsrError


@pytest.fixture(scope="module")
def utts(tiny_recipe):
    return read_manifest(tiny_recipe / "data/train/data.list")


@pytest.fixture(scope="module")
def shard_list(utts, tmp_path_factory) -> Path:
    return write_shards(utts, tmp_path_factory.mktemp("shards"), per_shard=3, log=lambda *_: None)


@pytest.fixture(scope="module")
def inputs(tiny_recipe) -> TrainingInputs:
    # Speed perturbation, dither and SpecAugment on: the draw order must match load_training_batch.
    return TrainingInputs(CharTokenizer.from_file(tiny_recipe / "data/lang_char/vocab.txt"), FeatureConfig(),
                          SpecAugmentConfig(max_w=5), SpeedPerturbConfig(enabled=True), seed=7)


def sizes(n: int, per_shard: int) -> list[int]:
    return [min(per_shard, n - i) for i in range(0, n, per_shard)]


def batches(shard_list, inputs, **kw):
    args = dict(epoch=1, seed=7, rank=0, world_size=1, inputs=inputs, batch_size=3, shuffle_buffer=5, sort_buffer=6)
    return list(shard_batches(read_shard_list(shard_list), **{**args, **kw}))


def test_write_shards_round_trip_and_reuse(utts, tmp_path):
    logs: list[str] = []
    listing = write_shards(utts, tmp_path, per_shard=5, log=logs.append)
    assert listing == tmp_path / SHARD_LIST and f"{len(sizes(len(utts), 5))} shards" in logs[-1]
    shards = read_shard_list(listing)
    assert [s.count for s in shards] == sizes(len(utts), 5)
    seen = []
    for s in shards:
        got = list(read_shard(s.path, s.count))
        assert len(got) == s.count
        assert s.seconds == pytest.approx(sum(u.duration for u in utts[len(seen): len(seen) + s.count]), abs=2e-3)
        seen += got
    assert [g.key for g in seen] == [u.key for u in utts]  # every utterance once, manifest order
    for g, u in zip(seen, utts):
        waveform, rate = read_audio(Path(u.wav))
        assert g.text == u.text and g.sample_rate == rate
        np.testing.assert_array_equal(g.waveform, waveform)

    mtimes = [s.path.stat().st_mtime_ns for s in shards]
    write_shards(utts, tmp_path, per_shard=5, log=logs.append)
    assert "reusing" in logs[-1] and [s.path.stat().st_mtime_ns for s in shards] == mtimes

    write_shards(utts, tmp_path, per_shard=10, log=logs.append)  # another size: rewritten, stale shards gone
    assert [s.count for s in read_shard_list(listing)] == sizes(len(utts), 10)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [f"shard_00000{i}.tar" for i in range(3)]

    with shards[0].path.open("r+b") as f:  # a truncated shard changes the total size: a re-run repairs it
        f.truncate(3000)
    write_shards(utts, tmp_path, per_shard=10, log=logs.append)
    assert "reusing" not in logs[-1] and len(list(read_shard(shards[0].path))) == 10


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_damaged_shards_are_reported_by_name(utts, tmp_path):
    wav = Path(utts[0].wav).read_bytes()
    good = _tar(tmp_path / "good.tar", [("a.wav", wav), ("a.txt", "你好".encode()), ("b.wav", wav), ("b.txt", b"x")])
    assert [u.key for u in read_shard(good)] == ["a", "b"]

    data = good.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 3])  # inside b.wav's data or header
    with pytest.raises(AsrError, match=r"cut\.tar.*re-run stage 0 with --shards"):
        list(read_shard(cut))

    with pytest.raises(AsrError, match=r"good\.tar.*after 2 utterances.*says 3"):
        list(read_shard(good, expected=3))  # a tar cut exactly between members reads as complete

    cases = {
        "swapped.tar": ([("a.txt", b"x"), ("a.wav", wav)], r"a\.txt: does not follow"),
        "two_audio.tar": ([("a.wav", wav), ("b.wav", wav), ("b.txt", b"x")], r"a\.wav: is followed by b\.wav"),
        "mismatch.tar": ([("a.wav", wav), ("b.txt", b"x")], r"b\.txt: does not follow"),
        "no_text.tar": ([("a.wav", wav), ("a.txt", b"x"), ("b.wav", wav)], r"b\.wav: is the last member"),
        "bad_audio.tar": ([("a.wav", b"not audio at all"), ("a.txt", b"x")], r"a\.wav: not readable audio"),
        "other.tar": ([("a.json", b"{}")], r"a\.json: is neither"),
    }
    for name, (members, message) in cases.items():
        with pytest.raises(AsrError, match=rf"{name.replace('.', '[.]')}: {message}"):
            list(read_shard(_tar(tmp_path / name, members)))

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x01" * 2000)
    with pytest.raises(AsrError, match="garbage.tar.*corrupt"):
        list(read_shard(garbage))

    bad_list = tmp_path / "bad.list"
    bad_list.write_text("# header\ngood.tar\t2\t1.5\ngood.tar 2\n", encoding="utf-8")
    with pytest.raises(AsrError, match=r"bad\.list:3:"):
        read_shard_list(bad_list)


def test_perturbed_samples_matches_speed_perturb():
    x = np.zeros(1, np.float32)
    for n in (400, 16001, 37123):
        for speed in (0.9, 1.0, 1.1, 0.95, 1.05):
            assert perturbed_samples(n, speed) == len(speed_perturb(np.resize(x, n), 16000, speed))


def test_every_utterance_once_per_epoch_over_ranks(utts, shard_list, inputs):
    all_keys = sorted(u.key for u in utts)
    orders = []
    for epoch in (1, 2):
        parts = [[k for b in batches(shard_list, inputs, epoch=epoch, rank=r, world_size=2) for k in b.keys]
                 for r in (0, 1)]
        assert sorted(parts[0] + parts[1]) == all_keys and not set(parts[0]) & set(parts[1])
        orders.append(parts[0] + parts[1])
    assert orders[0] != orders[1]
    with pytest.raises(AsrError, match="cannot feed"):
        batches(shard_list, inputs, world_size=9, rank=0)

    kept = {u.key for u in utts[::2]}
    assert sorted(k for b in batches(shard_list, inputs, keep=kept) for k in b.keys) == sorted(kept)


def test_deterministic_resumable_and_equal_to_load_training_batch(utts, shard_list, inputs):
    full = batches(shard_list, inputs, epoch=3)
    again = batches(shard_list, inputs, epoch=3)
    for a, b in zip(full, again, strict=True):
        assert a.keys == b.keys and a.feats.tobytes() == b.feats.tobytes() and a.labels.tobytes() == b.labels.tobytes()

    resumed = batches(shard_list, inputs, epoch=3, skip=3)
    assert [b.keys for b in resumed] == [b.keys for b in full[3:]]
    for a, b in zip(resumed, full[3:]):
        np.testing.assert_array_equal(a.feats, b.feats)

    by_key = {u.key: u for u in utts}
    for b in (full[0], full[-1]):
        ref = load_training_batch([by_key[k] for k in b.keys], 3, inputs)
        assert ref.keys == b.keys and ref.texts == b.texts
        np.testing.assert_array_equal(ref.feats, b.feats)
        np.testing.assert_array_equal(ref.feat_lengths, b.feat_lengths)
        np.testing.assert_array_equal(ref.labels, b.labels)


def test_sort_windows_and_dynamic_frame_budget(utts, shard_list, inputs):
    # batch_size 3 divides the sort buffer of 6: the flat stream is the sorted windows.
    lengths = [int(n) for b in batches(shard_list, inputs) for n in b.feat_lengths]
    assert len(lengths) == len(utts)
    for start in range(0, len(lengths), 6):
        window = lengths[start: start + 6]
        assert window == sorted(window)

    longest = max(lengths)
    budget = int(2.5 * longest)
    dynamic = batches(shard_list, inputs, batch_size=0, max_frames_in_batch=budget)
    assert sum(len(b.keys) for b in dynamic) == len(utts)
    for b, following in zip(dynamic, dynamic[1:] + [None]):
        assert len(b.keys) * int(b.feat_lengths.max()) <= budget
        if following is not None:  # greedy, as sampler.plan_batches: one more would not have fit
            assert (len(b.keys) + 1) * max(int(b.feat_lengths.max()), int(following.feat_lengths[0])) > budget
    with pytest.raises(AsrError, match="max_frames_in_batch"):
        batches(shard_list, inputs, batch_size=0, max_frames_in_batch=longest - 1)


def test_prepare_writes_shards(tiny_recipe, utts, repo, tmp_path, capsys):
    args = ["prepare", "--data_dir", str(tiny_recipe / "corpus"), "--out_dir", str(tmp_path / "data"),
            "--config", str(repo / "recipes/demo/conf/conformer.yaml"), "--nj", "1", "--shards", "10"]
    assert main(args) == 0
    shards = read_shard_list(tmp_path / "data/train/shards" / SHARD_LIST)
    assert [s.count for s in shards] == sizes(len(utts), 10)
    assert f"{len(shards)} shards" in capsys.readouterr().out
    assert (tmp_path / "data/train/global_cmvn").is_file()  # under --out_dir, not the working directory
