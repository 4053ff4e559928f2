"""Stage 1: train from a resolved config, on one process or data-parallel, resuming where it stopped.

`prepare_run` decides once, before any worker starts: reuse a complete run, resume an incomplete
one made from the same config and data, or start over. It writes the resolved config (vocab_size,
input_dim, data paths) to `exp/<name>/train.yaml`; every later stage reads only that file.
`run_training` is what each process runs. It continues from the latest checkpoint: the learning
rate, update counter and data order carry on as if the run had never stopped (the data order and
every random draw are functions of the seed and the position, see `data.sampler`/`data.loader`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from paddle_asr.artifacts import atomic_write_text, fingerprint, is_complete, mark_complete
from paddle_asr.config import AsrConfig, check_config, config_to_dict, load_config, save_config
from paddle_asr.cpu_settings import configure_cpu
from paddle_asr.data.dataset import Batch, filter_utterances, iterate_batches, make_batches
from paddle_asr.data.loader import BatchLoader, TrainingInputs, cache_size
from paddle_asr.data.manifest import read_manifest
from paddle_asr.data.sampler import BatchPlan, epoch_order, plan_batches, rank_part
from paddle_asr.data.shards import ShardInfo, read_shard_list, shard_batches
from paddle_asr.data.tokenizer import CharTokenizer, load_tokenizer
from paddle_asr.errors import AsrError, TrainingStopped
from paddle_asr.features import num_frames
from paddle_asr.models import cpu_kernels
from paddle_asr.models.registry import build_model_for_training
from paddle_asr.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_files,
    save_checkpoint,
)
from paddle_asr.train.distributed import World, barrier, current_world, init_world
from paddle_asr.train.finetune import (
    UNITS_FILE,
    checkpoint_units_file,
    freeze_parameters,
    hold_frozen_norms,
    load_initial_weights,
)
from paddle_asr.train.scheduler import build_scheduler

RUN_RECORD = "run.json"  # the fingerprint of the run an experiment directory holds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def resolve_config(config: AsrConfig, recipe_dir: Path) -> AsrConfig:
    """Fill the derived fields from the prepared data: vocabulary size and feature dimension."""
    tokenizer = load_tokenizer(recipe_dir / config.data.vocab, config.data.units)
    return dataclasses.replace(config, vocab_size=tokenizer.vocab_size, input_dim=config.features.num_mel_bins)


def prepare_run(config: AsrConfig, recipe_dir: Path, exp_dir: Path, *, force: bool = False, log=print) -> str | None:
    """Get exp_dir ready for `run_training`; returns the run's fingerprint, or None when a complete
    run with the same config and data can be reused."""
    data = config.data
    for key, rel in (("train", data.train), ("dev", data.dev), ("vocab", data.vocab), ("cmvn", data.cmvn),
                     ("train_shards", data.train_shards)):
        if rel and not (recipe_dir / rel).is_file():
            raise AsrError(f"data.{key}: {recipe_dir / rel} does not exist; run stage 0 (data preparation) first, "
                           f"or correct data.{key} in the config")
    config = resolve_config(config, recipe_dir)
    check_config(config, "the training config")  # also for a config built in code, not loaded
    inputs = [recipe_dir / p for p in (data.train, data.dev, data.vocab, data.cmvn, data.train_shards) if p]
    inputs += _init_from_inputs(config, recipe_dir, exp_dir)
    # Settings that do not change what is computed may differ on resume.
    fixed = config_to_dict(config)
    for key in ("num_workers", "num_threads", "log_interval", "checkpoint_interval", "keep_checkpoints"):
        fixed["training"].pop(key, None)
    # Only when set: runs from before fine-tuning and the feature cache existed stay reusable.
    for key in ("init_from", "freeze", "cache_features"):
        if not fixed["training"][key]:
            fixed["training"].pop(key)
    fp = fingerprint("train-v2", fixed, *inputs)
    record = exp_dir / RUN_RECORD
    if not force and is_complete(exp_dir, fp):
        log(f"stage 1 (train): reusing the complete run in {exp_dir} (same config and data; --force retrains)")
        return None
    same_run = record.is_file() and json.loads(record.read_text(encoding="utf-8")).get("fingerprint") == fp
    if same_run and not force:
        latest = latest_checkpoint(exp_dir / "checkpoints")
        where = f"epoch {latest['epoch']}, batch {latest['batch']} ({latest['name']})" if latest else "the start"
        log(f"stage 1 (train): resuming the unfinished run in {exp_dir} from {where}")
    else:
        if exp_dir.exists():
            import shutil

            log(f"stage 1 (train): starting {exp_dir} from scratch ({'forced' if force else 'new config or data'})")
            shutil.rmtree(exp_dir)
        exp_dir.mkdir(parents=True)
        atomic_write_text(record, json.dumps({"fingerprint": fp}))
    save_config(config, exp_dir / "train.yaml")
    # The units travel with the checkpoints: fine-tuning from them reads them (train.finetune).
    atomic_write_text(exp_dir / UNITS_FILE, (recipe_dir / data.vocab).read_text(encoding="utf-8"))
    return fp


def _init_from_inputs(config: AsrConfig, recipe_dir: Path, exp_dir: Path) -> list[Path]:
    """The files training.init_from reads (the checkpoint and its units), checked before anything is written."""
    if not config.training.init_from:
        return []
    ckpt = recipe_dir / config.training.init_from
    if not ckpt.is_file():
        raise AsrError(f"training.init_from: {ckpt} does not exist; give a .pdparams checkpoint, e.g. "
                       "exp/<name>/checkpoints/avg_<N>.pdparams of a trained run or the avg_1.pdparams "
                       "that paddle-asr import-paddlespeech writes")
    if exp_dir.resolve() in ckpt.resolve().parents:
        raise AsrError(f"training.init_from: {ckpt} lies inside {exp_dir}, the experiment this run writes (and "
                       "clears when the config changes); train the fine-tuned model under another --exp_dir "
                       "(run.sh --exp_name)")
    return [ckpt, checkpoint_units_file(ckpt)]


def train(config: AsrConfig, recipe_dir: Path, exp_dir: Path, *, force: bool = False, log=print) -> Path:
    """Prepare and run in this process (the single-process path of stage 1)."""
    fp = prepare_run(config, Path(recipe_dir), Path(exp_dir), force=force, log=log)
    if fp is not None:
        run_training(Path(recipe_dir), Path(exp_dir), log=log)
    return Path(exp_dir) / "train.yaml"


# ----------------------------------------------------------------------------------- evaluation
def evaluate_dev(model, batches: Iterable[Batch], tokenizer: CharTokenizer,
                 config: AsrConfig) -> tuple[dict[str, float], str]:
    """Utterance-weighted dev losses (non-finite batches skipped) and the error rate of CTC greedy
    search (key "error_rate"), with the rate's name: CER, or WER for English."""
    from paddle_asr.decode.search import ctc_greedy_search
    from paddle_asr.metrics.score import score

    model.eval()
    totals: dict[str, float] = {}
    count = 0
    refs, hyps = {}, {}
    with paddle.no_grad():
        for b in batches:
            feats, lengths = paddle.to_tensor(b.feats), paddle.to_tensor(b.feat_lengths)
            hs, enc_lengths, ctc_log_probs = model.forward_encoder(feats, lengths)
            loss, parts = model.loss_from_encoder(hs, enc_lengths, paddle.to_tensor(b.labels),
                                                  paddle.to_tensor(b.label_lengths))
            for key, text, ids in zip(b.keys, b.texts, ctc_greedy_search(ctc_log_probs.numpy(), enc_lengths.numpy())):
                refs[key], hyps[key] = text, tokenizer.decode(ids)
            values = {"loss": float(loss), **{k: float(v) for k, v in parts.items()}}
            if not all(math.isfinite(v) for v in values.values()):
                continue
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v * len(b.keys)
            count += len(b.keys)
    model.train()
    result = {k: v / count for k, v in totals.items()} if count else {"loss": float("inf")}
    report = score(refs, hyps, verbose=0)
    result["error_rate"] = report.overall.rate
    return result, report.metric


# ------------------------------------------------------------------------------------- training
def _load_split(path: Path, name: str, tokenizer, config: AsrConfig, model, say) -> list:
    tc = config.training
    slowest = min(config.speed_perturb.speeds) if config.speed_perturb.enabled else 1.0
    fastest = max(config.speed_perturb.speeds) if config.speed_perturb.enabled else 1.0
    utts, dropped = filter_utterances(
        read_manifest(path), tokenizer, config.features, min_duration=tc.min_duration_s,
        max_duration=tc.max_duration_s, subsampled_frames=model.encoder.output_length,
        max_tokens=tc.max_tokens, max_output_input_ratio=tc.max_output_input_ratio,
        # Speed perturbation shortens an utterance by up to `fastest`: it must still fit CTC then.
        shortest_speed=fastest if name == "train" else 1.0, longest_speed=slowest if name == "train" else 1.0,
        max_encoder_frames=getattr(model.encoder, "max_output_frames", None))
    say(f"stage 1: {name}: {len(utts)} utterances, {len(dropped)} filtered")
    for key, reason in dropped:
        say(f"stage 1:   filtered {key}: {reason}")
    if not utts:
        raise AsrError(f"no {name} utterance is left after filtering {path}")
    return utts


class StopRequest:
    """SIGTERM (a scheduler's preemption, `kill`, `docker stop`) sets `requested`; training then
    finishes its update, writes a checkpoint and stops. A second SIGTERM stops at once; the
    checkpoint files are atomic, so that loses only the unfinished steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise SystemExit(128 + signal.SIGTERM)
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _step_seed(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(2**31 - 1))


def _all_finite(value: float, world: World) -> bool:
    """Every rank must agree to skip a batch, or the gradient all-reduce would wait forever."""
    if world.size == 1:
        return math.isfinite(value)
    bad = paddle.to_tensor([0.0 if math.isfinite(value) else 1.0])
    paddle.distributed.all_reduce(bad)
    return float(bad) == 0.0


def _global_sums(values: list[float], world: World) -> list[float]:
    if world.size == 1:
        return [float(v) for v in values]
    t = paddle.to_tensor(values, dtype="float64")
    paddle.distributed.all_reduce(t)
    return t.numpy().tolist()


def _grad_norm(model) -> float:
    squares = [paddle.sum(paddle.square(p.grad.astype("float32"))) for p in model.parameters() if p.grad is not None]
    return float(paddle.sqrt(paddle.add_n(squares))) if squares else 0.0


@dataclasses.dataclass
class TrainingData:
    """What one process reads: the tokenizer, the training batches (a plan or shards) and the dev batches."""

    tokenizer: CharTokenizer
    inputs: TrainingInputs
    train_keys: set[str]  # the training utterances that passed the filters
    plan: BatchPlan | None  # the global batches, when training reads a manifest
    shards: list[ShardInfo] | None  # the shards, when training reads shards
    dev_batches: Callable[[], Iterable[Batch]]  # the dev set's batches, computed anew or kept (cache_features)


@dataclasses.dataclass
class TrainingState:
    """What one process carries from update to update; the counters are what a checkpoint saves."""

    config: AsrConfig
    world: World
    model: paddle.nn.Layer
    optimizer: paddle.optimizer.Optimizer
    scheduler: Any
    scaler: paddle.amp.GradScaler | None
    ckpt_dir: Path
    say: Callable[[str], None]
    train_model: paddle.nn.Layer | None = None  # `model`, or its DataParallel wrapper (set after resuming)
    epoch: int = 1
    first_batch: int = 0  # where `epoch` starts (after a resume, mid-epoch)
    step: int = 0  # optimizer updates
    epoch_loss: float = 0.0  # sum of this epoch's finite batch losses
    epoch_batches: int = 0
    skipped: int = 0  # batches with a non-finite loss
    skipped_keys: list[str] = dataclasses.field(default_factory=list)

    def next_epoch(self) -> None:
        self.epoch, self.first_batch, self.epoch_loss, self.epoch_batches = self.epoch + 1, 0, 0.0, 0


@dataclasses.dataclass
class _Throughput:
    """Frames trained since the last log line, for its frames/s."""

    since: float = dataclasses.field(default_factory=time.time)
    frames: float = 0.0


def _start_process(config: AsrConfig, recipe_dir: Path, world: World, use_gpu: bool,
                   say) -> tuple[paddle.nn.Layer, int]:
    """Join the process group, set the threads and seeds, and build the model; returns it and its size."""
    tc = config.training
    init_world(world, use_gpu)
    threads = configure_cpu(tc.num_threads)
    seed_everything(tc.seed)  # the same initial parameters on every rank
    model = build_model_for_training(config, recipe_dir)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    amp = tc.amp != "off"
    if amp and not use_gpu:
        raise AsrError(f"training.amp: {tc.amp} runs on GPUs only; set training.amp: off for CPU training")
    say(f"stage 1: {config.model.name}, {n_params / 1e6:.2f} M parameters, {world.size} process(es) x {threads} "
        f"threads{', ' + tc.amp + ' mixed precision' if amp else ''}")
    if not use_gpu:  # built here on first use where setup did not (every rank takes the same lock)
        say(f"stage 1: CPU training kernels: {cpu_kernels.status()}")
    freeze_parameters(model, tc.freeze, say)  # before the optimizer is built: it gets the others only
    return model, n_params


def _load_data(config: AsrConfig, recipe_dir: Path, tokenizer, model, world: World, say) -> TrainingData:
    tc = config.training
    train_utts = _load_split(recipe_dir / config.data.train, "train", tokenizer, config, model, say)
    dev_utts = _load_split(recipe_dir / config.data.dev, "dev", tokenizer, config, model, say)
    slowest = min(config.speed_perturb.speeds) if config.speed_perturb.enabled else 1.0
    per_process = (f"at most {tc.max_frames_in_batch} frames" if tc.max_frames_in_batch
                   else f"{tc.batch_size} utterances")
    shards = read_shard_list(recipe_dir / config.data.train_shards) if config.data.train_shards else None
    plan = None
    if shards is None:
        plan = plan_batches(train_utts, config.features, batch_size=tc.batch_size,
                            max_frames_in_batch=tc.max_frames_in_batch, world_size=world.size, slowest_speed=slowest)
        if plan.merged_tail:
            say(f"stage 1: the last batch had fewer utterances than the {world.size} processes; "
                "it joined the one before")
        say(f"stage 1: {len(plan.batches)} batches per epoch ({per_process} per process), {tc.accum_grad} per update")
    else:
        say(f"stage 1: reading {len(shards)} shards ({sum(s.count for s in shards)} utterances) of "
            f"{config.data.train_shards} sequentially, {per_process} per process and batch, {tc.accum_grad} per update")
    inputs = TrainingInputs(tokenizer, config.features, config.spec_augment, config.speed_perturb, tc.seed,
                            config.concat, num_frames(int(tc.max_duration_s * config.features.sample_rate),
                                                      config.features), config.voice_perturb, tc.cache_features)
    if tc.cache_features:
        size = cache_size(train_utts, config.features, world.size)
        say(f"stage 1: keeping the fbank of the {len(train_utts)} training utterances in memory from their first "
            f"epoch on ({size / 2**20:.0f} MiB in all)")
    return TrainingData(tokenizer, inputs, {u.key for u in train_utts}, plan, shards,
                        _dev_batches(dev_utts, tokenizer, config))


def _dev_batches(dev_utts: list, tokenizer, config: AsrConfig) -> Callable[[], Iterable[Batch]]:
    """What gives the dev batches each epoch: computed anew, or kept with training.cache_features (dev
    features are never perturbed, so they are the same every epoch)."""
    groups = make_batches(dev_utts, max(config.training.batch_size, 1))

    def fresh() -> Iterable[Batch]:
        return iterate_batches(groups, tokenizer, config.features, train=False)

    return list(fresh()).copy if config.training.cache_features else fresh


def _total_updates(config: AsrConfig, data: TrainingData) -> int | None:
    """The optimizer updates of the whole run (an epoch's last batch always updates); None for shards."""
    if data.plan is None:
        return None
    return config.training.max_epoch * -(-len(data.plan.batches) // config.training.accum_grad)


def _new_state(config: AsrConfig, world: World, model, data: TrainingData, ckpt_dir: Path, say) -> TrainingState:
    scheduler = build_scheduler(config.optim, config.scheduler, _total_updates(config, data))
    clip = paddle.nn.ClipGradByGlobalNorm(config.optim.grad_clip)
    opt_cls = paddle.optimizer.Adam if config.optim.name == "adam" else paddle.optimizer.AdamW
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = opt_cls(learning_rate=scheduler, parameters=trainable,
                        weight_decay=config.optim.weight_decay or None, grad_clip=clip)
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0**15) if config.training.amp == "fp16" else None
    return TrainingState(config, world, model, optimizer, scheduler, scaler, ckpt_dir, say)


def _resume(state: TrainingState) -> bool:
    """Continue from the latest checkpoint, if any (returns whether there was one); rank 0 first
    removes what an interrupted save left."""
    world, say, ckpt_dir = state.world, state.say, state.ckpt_dir
    if world.is_main and ckpt_dir.is_dir():
        stale = remove_stale_files(ckpt_dir)
        if stale:
            say(f"stage 1: removed {len(stale)} temporary files of an interrupted save: {', '.join(stale)}")
    barrier(world)
    latest = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if latest is None:
        return False
    load_checkpoint(latest, state.model, state.optimizer, state.scaler)
    state.epoch, state.first_batch, state.step = latest["epoch"], latest["batch"], latest["step"]
    state.epoch_loss, state.epoch_batches = latest.get("epoch_loss_sum", 0.0), latest.get("epoch_batches", 0)
    if latest.get("world_size", world.size) != world.size:
        say(f"stage 1: the checkpoint was written by {latest['world_size']} processes, this run has {world.size}: "
            "the batches from here on differ from an uninterrupted run")
    if latest.get("epoch_done", latest["name"].isdigit()):
        state.next_epoch()
    say(f"stage 1: resumed from {latest['name']} at epoch {state.epoch}, batch {state.first_batch}, "
        f"update {state.step}, lr {state.optimizer.get_lr():.3e}")
    return True


def _start_weights(state: TrainingState, recipe_dir: Path) -> None:
    """Resume an interrupted run; a new one starts from training.init_from when set. Resuming wins:
    the interrupted run started from init_from already, and its checkpoint holds where it got to."""
    init_from = state.config.training.init_from
    if _resume(state):
        if init_from:
            state.say(f"stage 1: training.init_from ({init_from}) is not read again: this run started from it, "
                      "and resumes from its own checkpoint (weights, optimizer, schedule)")
    elif init_from:
        load_initial_weights(state.model, state.config, recipe_dir, state.say)


def _open_writer(exp_dir: Path, config: AsrConfig, n_params: int, world: World):
    from visualdl import LogWriter  # imported late: slow to import, and only rank 0 writes logs

    tc = config.training
    writer = LogWriter(logdir=str(exp_dir / "visualdl"))
    hparams = {"model": config.model.name, "encoder": config.model.encoder_type, "params_M": round(n_params / 1e6, 3),
               "lr": config.optim.lr, "scheduler": config.scheduler.name, "batch_size": tc.batch_size,
               "max_frames_in_batch": tc.max_frames_in_batch, "accum_grad": tc.accum_grad, "processes": world.size,
               "ctc_weight": config.model.ctc_weight, "amp": tc.amp, "speed_perturb": str(config.speed_perturb.enabled)}
    writer.add_hparams(hparams, ["dev/loss", "dev/error_rate"])
    return writer


def _epoch_batches(loader: BatchLoader, data: TrainingData, config: AsrConfig, world: World, epoch: int,
                   first: int) -> Iterator[tuple[int, Batch, float, bool]]:
    """(index in the epoch, this process's batch, its share of the global batch x processes,
    whether it is the epoch's last) from `first` on."""
    if data.shards is None:
        yield from _planned_batches(loader, data.plan, config.training.seed, world, epoch, first)
        return
    tc = config.training
    stream = shard_batches(data.shards, epoch=epoch, seed=tc.seed, rank=world.rank, world_size=world.size,
                           inputs=data.inputs, batch_size=tc.batch_size, max_frames_in_batch=tc.max_frames_in_batch,
                           shuffle_buffer=config.data.shuffle_buffer, sort_buffer=config.data.sort_buffer,
                           skip=first, keep=data.train_keys)
    yield from _agreed_batches(stream, world, first)


def _planned_batches(loader: BatchLoader, plan: BatchPlan, seed: int, world: World, epoch: int,
                     first: int) -> Iterator[tuple[int, Batch, float, bool]]:
    order = epoch_order(len(plan.batches), seed, epoch)[first:]
    sizes = [len(plan.batches[j]) for j in order]
    parts = [rank_part(plan.batches[j], world.rank, world.size) for j in order]
    for k, batch in enumerate(loader.batches(parts, epoch)):
        yield first + k, batch, len(batch.keys) * world.size / sizes[k], first + k + 1 == len(plan.batches)


def _agreed_batches(stream: Iterator[Batch], world: World, first: int) -> Iterator[tuple[int, Batch, float, bool]]:
    """Processes read different shards and run out at different times: each step they agree on
    the global batch size and on whether every one of them has a next batch; the epoch ends
    for all at the first step where one has none (the others' remaining batches are not used
    in this epoch, and their shards come in another order in the next)."""
    batch, index = next(stream, None), first
    while batch is not None:
        following = next(stream, None)
        size, ready = _global_sums([len(batch.keys), following is not None], world)
        yield index, batch, len(batch.keys) * world.size / size, ready < world.size
        if ready < world.size:
            return
        batch, index = following, index + 1


def _checkpoint_record(state: TrainingState, batch: int, epoch_done: bool, **extra) -> dict:
    """The record saved with a checkpoint: where training stands, for resuming, and `extra`."""
    return {"epoch": state.epoch, "batch": batch, "epoch_done": epoch_done, "step": state.step,
            "world_size": state.world.size, **extra}


def _save(state: TrainingState, name: str, record: dict) -> None:
    tc = state.config.training
    save_checkpoint(state.ckpt_dir, name, state.model, state.optimizer, state.scaler, record)
    prune_checkpoints(state.ckpt_dir, tc.keep_checkpoints)


def _train_epoch(state: TrainingState, data: TrainingData, loader: BatchLoader, writer, stop: StopRequest) -> int:
    """Train on `state.epoch` from `state.first_batch` on; returns the index of the last batch
    (first_batch - 1 when none was left)."""
    state.train_model.train()
    hold_frozen_norms(state.model, state.config.training.freeze)
    meter = _Throughput()
    index = state.first_batch - 1
    for index, batch, share, last in _epoch_batches(loader, data, state.config, state.world, state.epoch,
                                                    state.first_batch):
        _train_batch(state, index, batch, share, last, meter, writer, stop)
    return index


def _train_batch(state: TrainingState, index: int, batch: Batch, share: float, last: bool, meter: _Throughput,
                 writer, stop: StopRequest) -> None:
    """Forward and backward one batch; at the end of a gradient accumulation, update, log, and
    checkpoint or stop when it is time."""
    tc, world = state.config.training, state.world
    # Dynamic-chunk sizes (python random) are the same on every rank; dropout differs per rank.
    random.seed(_step_seed(tc.seed, state.epoch, index))
    paddle.seed(_step_seed(tc.seed, state.epoch, index, world.rank))
    update_now = (index + 1) % tc.accum_grad == 0 or last
    amp_dtype = "bfloat16" if tc.amp == "bf16" else "float16"
    # Keyword given only when set: DeepSpeech2's forward has no such argument (the config refuses it there).
    ctc_only = {"ctc_only": True} if state.step < tc.ctc_only_updates else {}
    with paddle.amp.auto_cast(enable=tc.amp != "off", dtype=amp_dtype, level="O1"):
        loss, parts_loss = state.train_model(paddle.to_tensor(batch.feats), paddle.to_tensor(batch.feat_lengths),
                                             paddle.to_tensor(batch.labels), paddle.to_tensor(batch.label_lengths),
                                             **ctc_only)
    value = float(loss)
    if not _all_finite(value, world):
        _skip_batch(state, index, batch, value)
        return
    # The loss is a mean over this process's utterances and data parallelism averages
    # the gradients of the processes: weighting by the share of the global batch makes
    # that the mean over the global batch even when its parts differ in size.
    with contextlib.nullcontext() if update_now or world.size == 1 else state.train_model.no_sync():
        scaled = loss * (share / tc.accum_grad)
        (state.scaler.scale(scaled) if state.scaler else scaled).backward()
    state.epoch_loss, state.epoch_batches = state.epoch_loss + value, state.epoch_batches + 1
    meter.frames += float(batch.feat_lengths.sum())
    if not update_now:
        return
    log_now = (state.step + 1) % tc.log_interval == 0
    grad_norm, lr = _update(state, log_now)
    if log_now:
        _log_step(state, writer, meter, value, parts_loss, lr, grad_norm)
    _checkpoint_or_stop(state, index, last, stop)


def _skip_batch(state: TrainingState, index: int, batch: Batch, value: float) -> None:
    """Drop a batch whose loss is not finite on some process; too many such batches stop training."""
    tc = state.config.training
    state.skipped += 1
    state.skipped_keys += batch.keys
    state.say(f"stage 1: epoch {state.epoch} batch {index}: loss {value} (non-finite on some process), batch "
              f"skipped ({state.skipped} so far); its utterances: {' '.join(batch.keys)}")
    state.optimizer.clear_grad()
    if state.skipped > tc.max_nonfinite_batches:
        raise AsrError(
            f"{state.skipped} batches had a NaN or infinite loss, more than training.max_nonfinite_batches="
            f"{tc.max_nonfinite_batches}: training is diverging or the data is broken. Lower optim.lr "
            f"(now {state.config.optim.lr}) or check the utterances of the last one: {' '.join(batch.keys)}")


def _update(state: TrainingState, log_now: bool) -> tuple[float, float]:
    """One optimizer update; returns the gradient norm (0 unless `log_now`) and the learning rate it used."""
    optimizer, scaler = state.optimizer, state.scaler
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = _grad_norm(state.model) if log_now else 0.0
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    # One process frees the gradients until the next backward: lower peak memory,
    # and no memset of every gradient buffer each step.
    # Data parallelism keeps them: its reducer fuses gradients into fixed buffers.
    optimizer.clear_grad(set_to_zero=state.world.size > 1)
    state.step += 1
    lr = optimizer.get_lr()
    if not getattr(state.scheduler, "per_epoch", False):
        state.scheduler.step()
    return grad_norm, lr


def _log_step(state: TrainingState, writer, meter: _Throughput, value: float, parts_loss: dict, lr: float,
              grad_norm: float) -> None:
    step = state.step
    frames = _global_sums([meter.frames], state.world)[0]
    fps = frames / max(time.time() - meter.since, 1e-9)
    meter.since, meter.frames = time.time(), 0.0
    if writer:
        writer.add_scalar("train/loss", value, step)
        for name, part in parts_loss.items():
            writer.add_scalar(f"train/loss_{name}", float(part), step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/grad_norm", grad_norm, step)
        writer.add_scalar("train/frames_per_second", fps, step)
    detail = " ".join(f"{k} {float(v):.3f}" for k, v in parts_loss.items())
    state.say(f"stage 1: epoch {state.epoch} step {step} loss {value:.3f} ({detail}) lr {lr:.2e} "
              f"grad norm {grad_norm:.2f} {fps:.0f} frames/s")


def _checkpoint_or_stop(state: TrainingState, index: int, last: bool, stop: StopRequest) -> None:
    """Write a mid-epoch checkpoint every checkpoint_interval updates, or on SIGTERM, then stop."""
    tc, world = state.config.training, state.world
    # Every process stops at the same update (a lone one would leave the others waiting in
    # the gradient all-reduce); at the epoch's end the epoch checkpoint is written instead.
    stopping = _global_sums([float(stop.requested)], world)[0] > 0 and not last
    if (tc.checkpoint_interval and state.step % tc.checkpoint_interval == 0 or stopping) and not last:
        if world.is_main:
            _save(state, f"step_{state.step}", _checkpoint_record(
                state, index + 1, False, epoch_loss_sum=state.epoch_loss, epoch_batches=state.epoch_batches))
        barrier(world)
    if stopping:
        raise TrainingStopped(f"step_{state.step}", state.step)


def _end_epoch(state: TrainingState, data: TrainingData, writer, stop: StopRequest, index: int,
               started: float) -> None:
    """Validate on dev, write the epoch checkpoint and its logs (rank 0), then stop on SIGTERM or
    move to the next epoch."""
    config, world = state.config, state.world
    if state.epoch_batches == 0 and index >= state.first_batch:
        raise AsrError(f"training diverged: every batch of epoch {state.epoch} had a non-finite loss; lower "
                       f"optim.lr (now {config.optim.lr}) or optim.grad_clip, and check the features")
    if getattr(state.scheduler, "per_epoch", False):
        state.scheduler.step()
    if world.is_main:
        _validate_and_save(state, data, writer, index, started)
    barrier(world)
    if _global_sums([float(stop.requested)], world)[0] > 0 and state.epoch < config.training.max_epoch:
        raise TrainingStopped(str(state.epoch), state.step)
    state.next_epoch()


def _validate_and_save(state: TrainingState, data: TrainingData, writer, index: int, started: float) -> None:
    config, epoch = state.config, state.epoch
    train_loss = state.epoch_loss / max(state.epoch_batches, 1)
    dev, dev_metric = evaluate_dev(state.model, data.dev_batches(), data.tokenizer, config)
    for name, v in dev.items():
        writer.add_scalar({"loss": "dev/loss", "error_rate": "dev/error_rate"}.get(name, f"dev/loss_{name}"), v, epoch)
    writer.add_scalar("train/epoch_loss", train_loss, epoch)
    record = _checkpoint_record(state, index + 1, True, dev_loss=dev["loss"], dev_error_rate=dev["error_rate"],
                                train_loss=train_loss, lr=state.optimizer.get_lr())
    _save(state, str(epoch), record)
    dev_detail = " ".join(f"{k} {v:.3f}" for k, v in dev.items() if k not in ("loss", "error_rate"))
    state.say(f"stage 1: epoch {epoch}/{config.training.max_epoch} train loss {train_loss:.3f} "
              f"dev loss {dev['loss']:.3f} ({dev_detail}) dev {dev_metric} {dev['error_rate']:.2f} % "
              f"({time.time() - started:.0f} s, {state.step} updates)")


def _write_summary(exp_dir: Path, state: TrainingState, n_params: int) -> None:
    """train_summary.json, and the mark that the run is complete."""
    summary = {"parameters": n_params, "steps": state.step, "skipped_batches": state.skipped,
               "skipped_batch_utterances": state.skipped_keys[:1000], "processes": state.world.size}
    atomic_write_text(exp_dir / "train_summary.json", json.dumps(summary))
    fp = json.loads((exp_dir / RUN_RECORD).read_text(encoding="utf-8"))["fingerprint"]
    mark_complete(exp_dir, fp, **summary)


def run_training(recipe_dir: Path, exp_dir: Path, *, world: World | None = None, use_gpu: bool = False,
                 log=print) -> None:
    """One training process; rank 0 logs, evaluates on dev and writes checkpoints."""
    world = world or current_world()
    config = load_config(exp_dir / "train.yaml")
    say = log if world.is_main else (lambda *_: None)
    tokenizer = load_tokenizer(recipe_dir / config.data.vocab, config.data.units)
    model, n_params = _start_process(config, recipe_dir, world, use_gpu, say)
    data = _load_data(config, recipe_dir, tokenizer, model, world, say)
    state = _new_state(config, world, model, data, exp_dir / "checkpoints", say)
    _start_weights(state, recipe_dir)
    # The unused concat_linear layers (kept for PaddleSpeech checkpoint compatibility) get no gradient.
    state.train_model = paddle.DataParallel(model, find_unused_parameters=True) if world.size > 1 else model
    writer = _open_writer(exp_dir, config, n_params, world) if world.is_main else None
    stop = StopRequest()
    try:
        with BatchLoader(data.inputs, config.training.num_workers) as loader:
            while state.epoch <= config.training.max_epoch:
                started = time.time()
                index = _train_epoch(state, data, loader, writer, stop)
                _end_epoch(state, data, writer, stop, index, started)
    finally:
        stop.restore()
        if writer:
            writer.close()
    if world.is_main:
        _write_summary(exp_dir, state, n_params)
