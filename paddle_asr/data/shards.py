"""Training data as tar shards read sequentially (WeNet's `data_type: shard`, for corpora past 1k h).

A shard is an uncompressed tar of about 1000 utterances, each stored as `<key>.wav` (the original
file's bytes) followed by `<key>.txt` (UTF-8 transcript). Reading whole shards front to back
replaces a million small random reads with a few hundred large sequential ones.

Per epoch each rank reads its share of the shards in a seeded order, then WeNet's pipeline
(wenet/dataset/dataset.py; docs/training.md): a shuffle buffer (local randomness, since shards are
read in order), a sort buffer (similar lengths per batch, little padding), then static or dynamic
batches. Every random draw of an utterance still comes from `utterance_rng(seed, epoch, key)`, so an
utterance's features are exactly those `load_training_batch` computes, whatever shard or rank it
comes from.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from paddle_asr.artifacts import atomic_output_file, atomic_write_text, fingerprint, mark_complete, reuse_or_clear
from paddle_asr.data.audio import decode_audio
from paddle_asr.data.augment import choose_speed
from paddle_asr.data.dataset import Batch
from paddle_asr.data.loader import TrainingInputs, training_batch, utterance_features, utterance_rng
from paddle_asr.data.manifest import Utterance
from paddle_asr.data.sampler import epoch_order
from paddle_asr.errors import AsrError
from paddle_asr.features import num_frames

SHARD_LIST = "shards.list"
AUDIO_SUFFIXES = frozenset({"wav", "flac"})  # what soundfile reads from memory without a file name
_REWRITE = "re-run stage 0 with --shards N (paddle-asr prepare ... --shards 1000) to rewrite the shards"


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    count: int  # utterances
    seconds: float  # audio duration, from the manifest


@dataclass
class ShardUtterance:
    key: str
    waveform: np.ndarray  # mono float32 in the int16 range, as audio.read_audio returns
    sample_rate: int
    text: str


@dataclass(frozen=True)
class _Member:
    """An utterance still encoded: the buffers hold 2 bytes a sample instead of 4, and utterances
    of skipped batches are never decoded."""

    key: str
    audio: bytes
    text: str
    shard: Path
    name: str  # the audio member's name, for error messages


# ---------------------------------------------------------------------------------------- writing
def _audio_suffix(wav: str) -> str:
    suffix = Path(wav).suffix.lower().lstrip(".")
    return suffix if suffix in AUDIO_SUFFIXES else "wav"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same data gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _shards_whole(out_dir: Path, record: dict) -> bool:
    """Every shard the list names is still there at the size it was written (a truncated or deleted
    shard changes the total, so a plain re-run repairs it)."""
    try:
        shards = read_shard_list(out_dir / SHARD_LIST)
        return sum(s.path.stat().st_size for s in shards) == int(record.get("bytes", -1))
    except (OSError, ValueError, AsrError):
        return False


def write_shards(utts: list[Utterance], out_dir: Path, per_shard: int = 1000, *, force: bool = False,
                 log=print) -> Path:
    """Write `out_dir/shard_NNNNNN.tar` (per_shard utterances each, manifest order) and
    `out_dir/shards.list`; return the list's path. A complete `out_dir` written for the same
    utterances and shard size is reused; anything else in it is removed and rewritten."""
    if per_shard < 1:
        raise AsrError(f"--shards must be at least 1 utterance per shard, got {per_shard}")
    if not utts:
        raise AsrError(f"no utterance to write into shards in {out_dir}; check the manifest")
    out_dir = Path(out_dir)
    list_path = out_dir / SHARD_LIST
    fp = fingerprint("shards-v2", per_shard, [[u.key, u.wav, u.duration, u.text] for u in utts])
    if reuse_or_clear(out_dir, fp, "stage 0", force, log, noun="shards", verify=_shards_whole):
        return list_path

    out_dir.mkdir(parents=True, exist_ok=True)
    lines, total_bytes = [], 0
    for index, start in enumerate(range(0, len(utts), per_shard)):
        group = utts[start: start + per_shard]
        path = out_dir / f"shard_{index:06d}.tar"
        with atomic_output_file(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for u in group:
                try:
                    audio = Path(u.wav).read_bytes()
                except OSError as e:
                    raise AsrError(f"cannot read {u.wav} (utterance {u.key}) for the shards ({e}); "
                                   "re-run stage 0 without --shards to refresh the manifest") from None
                _add_member(tar, f"{u.key}.{_audio_suffix(u.wav)}", audio)
                _add_member(tar, f"{u.key}.txt", u.text.encode("utf-8"))
        total_bytes += path.stat().st_size
        lines.append(f"{path.name}\t{len(group)}\t{sum(u.duration for u in group):.3f}\n")
    atomic_write_text(list_path, "".join(lines))
    mark_complete(out_dir, fp, utterances=len(utts), per_shard=per_shard, bytes=total_bytes)
    hours = sum(u.duration for u in utts) / 3600
    log(f"stage 0: {len(utts)} training utterances ({hours:.2f} h) -> {len(lines)} shards of at most {per_shard} "
        f"({total_bytes / 2**20:.1f} MiB) in {out_dir}")
    return list_path


# ---------------------------------------------------------------------------------------- reading
def read_shard_list(path: Path) -> list[ShardInfo]:
    """`path<TAB>utterances<TAB>seconds` lines; relative paths are relative to the list's folder."""
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"shard list {path} does not exist; run stage 0 with --shards N to write it")
    shards = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AsrError(f"cannot read shard list {path} ({e}); {_REWRITE}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            if len(parts) != 3:
                raise ValueError("expected 3 tab-separated fields")
            count, seconds = int(parts[1]), float(parts[2])
            if count < 1 or not seconds >= 0.0:
                raise ValueError("the utterance count must be positive and the seconds not negative")
        except ValueError as e:
            raise AsrError(f"{path}:{lineno}: not a 'path<TAB>utterances<TAB>seconds' line ({e}); {_REWRITE}") from None
        shard = Path(parts[0])
        shards.append(ShardInfo(shard if shard.is_absolute() else path.parent / shard, count, seconds))
    if not shards:
        raise AsrError(f"shard list {path} names no shard; {_REWRITE}")
    return shards


def _damaged(shard: Path, member: str, problem: str) -> AsrError:
    return AsrError(f"shard {shard}: {member}: {problem}; delete {shard.parent} and {_REWRITE}")


def _read_members(path: Path, expected: int | None = None) -> Iterator[_Member]:
    """The (audio, transcript) pairs of a shard in order, checked: every audio member is followed by
    its own `.txt`, nothing else is there, and the count matches the list (a tar cut at a member
    boundary reads as complete)."""
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"shard {path} does not exist; {_REWRITE}")
    pending: tuple[str, bytes, str] | None = None  # (key, audio, member name) waiting for its transcript
    count, where = 0, "the first member"
    try:
        # "r|": a forward-only stream, the access pattern shards exist for.
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                where = f"member {info.name}"
                key, _, suffix = info.name.rpartition(".")
                if not info.isfile() or not key:
                    raise _damaged(path, info.name, "is not a '<key>.wav' or '<key>.txt' file")
                data = tar.extractfile(info).read()
                if suffix in AUDIO_SUFFIXES:
                    if pending is not None:
                        raise _damaged(path, pending[2], f"is followed by {info.name}, not by {pending[0]}.txt")
                    pending = (key, data, info.name)
                elif suffix == "txt":
                    if pending is None or pending[0] != key:
                        raise _damaged(path, info.name, f"does not follow its audio member {key}.wav")
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _damaged(path, info.name, "is not UTF-8 text") from None
                    yield _Member(key, pending[1], text, path, pending[2])
                    pending, count = None, count + 1
                else:
                    raise _damaged(path, info.name, "is neither audio (.wav, .flac) nor a transcript (.txt)")
                where = f"after member {info.name}"
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _damaged(path, where, f"truncated or corrupt tar data ({e})") from None
    if pending is not None:
        raise _damaged(path, pending[2], f"is the last member; its transcript {pending[0]}.txt is missing")
    if expected is not None and count != expected:
        raise _damaged(path, f"after {count} utterances", f"the shard ends, but the shard list says {expected}")


def _decode(m: _Member) -> tuple[np.ndarray, int]:
    try:
        return decode_audio(m.audio)
    except AsrError as e:
        raise _damaged(m.shard, m.name, str(e)) from None


def read_shard(path: Path, expected: int | None = None) -> Iterator[ShardUtterance]:
    """The utterances of one shard in order; `expected` (the list's count) also catches a shard cut
    exactly between two members."""
    for m in _read_members(path, expected):
        waveform, rate = _decode(m)
        yield ShardUtterance(m.key, waveform, rate, m.text)


# --------------------------------------------------------------------------------------- training
def perturbed_samples(num_samples: int, speed: float) -> int:
    """The length of `speed_perturb(x, rate, speed)` for len(x) = num_samples, without resampling:
    the same ratio approximation, and resample_poly's ceil(n * up / down)."""
    if speed == 1.0:
        return num_samples
    ratio = Fraction(speed).limit_denominator(100)
    up, down = ratio.denominator, ratio.numerator
    return num_samples if up == down else -(-num_samples * up // down)


def _training_frames(m: _Member, epoch: int, inputs: TrainingInputs) -> int:
    """Feature frames after this epoch's speed perturbation, from the audio header alone."""
    try:
        info = sf.info(io.BytesIO(m.audio))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise _damaged(m.shard, m.name, f"not readable audio ({e})") from None
    if info.samplerate != inputs.features.sample_rate:
        raise AsrError(f"shard {m.shard}: {m.name} has sample rate {info.samplerate} Hz, expected "
                       f"{inputs.features.sample_rate} Hz; re-run stage 0 (it filters other rates) with --shards N")
    # The speed is the first draw of the utterance's generator, as in utterance_features.
    speed = choose_speed(inputs.speed_perturb, utterance_rng(inputs.seed, epoch, m.key))
    return num_frames(perturbed_samples(int(info.frames), speed), inputs.features)


def _shuffled(items: Iterable[_Member], size: int, rng: np.random.Generator) -> Iterator[_Member]:
    if size <= 1:
        yield from items
        return
    buf: list[_Member] = []

    def pop_random() -> _Member:
        i = int(rng.integers(len(buf)))
        buf[i], buf[-1] = buf[-1], buf[i]
        return buf.pop()

    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield pop_random()
    while buf:
        yield pop_random()


def _sorted_windows(items: Iterable[tuple[_Member, int]], size: int) -> Iterator[tuple[_Member, int]]:
    buf: list[tuple[_Member, int]] = []
    for item in items:
        buf.append(item)
        if len(buf) >= max(size, 1):
            buf.sort(key=lambda x: x[1])  # stable: ties keep their (seeded) arrival order
            yield from buf
            buf = []
    buf.sort(key=lambda x: x[1])
    yield from buf


def _grouped(items: Iterable[tuple[_Member, int]], batch_size: int, max_frames: int) -> Iterator[list[_Member]]:
    """Static batches of batch_size, or dynamic ones by padded frames (sampler.plan_batches's rule
    with world_size=1: count x longest <= max_frames)."""
    current: list[_Member] = []
    longest = 0
    for m, frames in items:
        if max_frames > 0:
            if frames > max_frames:
                raise AsrError(f"shard {m.shard}: utterance {m.key} has {frames} frames, more than "
                               f"training.max_frames_in_batch={max_frames}; raise it or lower training.max_duration_s")
            if current and max(longest, frames) * (len(current) + 1) > max_frames:
                yield current
                current, longest = [], 0
        current.append(m)
        longest = max(longest, frames)
        if max_frames <= 0 and len(current) == batch_size:
            yield current
            current, longest = [], 0
    if current:
        yield current


def shard_batches(
    shards: list[ShardInfo],
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    inputs: TrainingInputs,
    batch_size: int,
    max_frames_in_batch: int = 0,
    shuffle_buffer: int = 1500,
    sort_buffer: int = 500,
    skip: int = 0,
    keep: Container[str] | None = None,
) -> Iterator[Batch]:
    """This rank's training batches of an epoch, read from its shards in order.

    `seed` orders the shards and seeds the shuffle buffer; the per-utterance draws use
    `inputs.seed` as `load_training_batch` does (the trainer passes the same value for both).
    `keep`, when given, holds the keys to train on (the trainer's filtered utterances); others are dropped.
    `skip=n` forms the first n batches without computing their features (exact resume).
    Ranks can get different numbers of batches: their shards differ.
    """
    if batch_size < 1 and max_frames_in_batch < 1:
        raise AsrError("training.batch_size must be at least 1 (or set training.max_frames_in_batch)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if len(shards) < world_size:
        raise AsrError(f"{len(shards)} shards cannot feed {world_size} processes; write smaller shards "
                       "(stage 0 with a lower --shards N) or use fewer processes")
    mine = [shards[i] for i in epoch_order(len(shards), seed, epoch)][rank::world_size]
    members: Iterable[_Member] = (m for s in mine for m in _read_members(s.path, s.count))
    if keep is not None:
        members = (m for m in members if m.key in keep)
    shuffled = _shuffled(members, shuffle_buffer, np.random.default_rng([seed, epoch, rank]))
    sized = ((m, _training_frames(m, epoch, inputs)) for m in shuffled)
    for index, group in enumerate(_grouped(_sorted_windows(sized, sort_buffer), batch_size, max_frames_in_batch)):
        if index < skip:
            continue
        feats = []
        for m in group:
            waveform, rate = _decode(m)
            feats.append(utterance_features(waveform, rate, m.key, epoch, inputs))
        yield training_batch(feats, [m.text for m in group], [m.key for m in group], epoch, inputs)
