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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paddle

from paddle_asr.artifacts import atomic_write_text, fingerprint, is_complete, mark_complete
from paddle_asr.config import AsrConfig, config_to_dict, load_config, save_config
from paddle_asr.cpu_settings import configure_cpu
from paddle_asr.data.dataset import Batch, filter_utterances, iterate_batches, make_batches
from paddle_asr.data.loader import BatchLoader, TrainingInputs
from paddle_asr.data.manifest import read_manifest
from paddle_asr.data.sampler import epoch_order, plan_batches, rank_part
from paddle_asr.data.shards import read_shard_list, shard_batches
from paddle_asr.data.tokenizer import CharTokenizer, load_tokenizer
from paddle_asr.errors import AsrError, TrainingStopped
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


def check_training_config(config: AsrConfig) -> None:
    tc = config.training
    if tc.amp not in ("off", "fp16", "bf16"):
        raise AsrError(f"training.amp '{tc.amp}' unknown; use off, fp16 or bf16")
    if config.spec_augment.fill not in ("zero", "mean"):
        raise AsrError(f"spec_augment.fill '{config.spec_augment.fill}' unknown; use zero or mean")
    if tc.average_mode not in ("best", "last"):
        raise AsrError(f"training.average_mode '{tc.average_mode}' unknown; use best or last")
    if tc.accum_grad < 1 or tc.max_epoch < 1:
        raise AsrError("training.accum_grad and training.max_epoch must be at least 1")
    if 0 < tc.keep_checkpoints < tc.average_num:
        raise AsrError(f"training.keep_checkpoints={tc.keep_checkpoints} would delete checkpoints stage 2 averages "
                       f"(average_num={tc.average_num}); keep at least average_num, or 0 for all")
    if config.optim.name not in ("adam", "adamw"):
        raise AsrError(f"optim.name '{config.optim.name}' unknown; use adam or adamw")


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
    check_training_config(config)
    inputs = [recipe_dir / p for p in (data.train, data.dev, data.vocab, data.cmvn, data.train_shards) if p]
    # Settings that do not change what is computed may differ on resume.
    fixed = config_to_dict(config)
    for key in ("num_workers", "num_threads", "log_interval", "checkpoint_interval", "keep_checkpoints"):
        fixed["training"].pop(key, None)
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
    return fp


def train(config: AsrConfig, recipe_dir: Path, exp_dir: Path, *, force: bool = False, log=print) -> Path:
    """Prepare and run in this process (the single-process path of stage 1)."""
    fp = prepare_run(config, Path(recipe_dir), Path(exp_dir), force=force, log=log)
    if fp is not None:
        run_training(Path(recipe_dir), Path(exp_dir), log=log)
    return Path(exp_dir) / "train.yaml"


# ----------------------------------------------------------------------------------- evaluation
def evaluate_dev(model, batches, tokenizer: CharTokenizer, config: AsrConfig) -> tuple[dict[str, float], str]:
    """Utterance-weighted dev losses (non-finite batches skipped) and the error rate of CTC greedy
    search (key "cer"), with the rate's name: CER, or WER for English."""
    from paddle_asr.decode.search import ctc_greedy_search
    from paddle_asr.metrics.score import score

    model.eval()
    totals: dict[str, float] = {}
    count = 0
    refs, hyps = {}, {}
    with paddle.no_grad():
        for b in iterate_batches(batches, tokenizer, config.features, train=False):
            feats, lengths = paddle.to_tensor(b.feats), paddle.to_tensor(b.feat_lengths)
            loss, parts = model(feats, lengths, paddle.to_tensor(b.labels), paddle.to_tensor(b.label_lengths))
            _, enc_lengths, ctc_log_probs = model.forward_encoder(feats, lengths)
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
    result["cer"] = report.overall.rate
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


def run_training(recipe_dir: Path, exp_dir: Path, *, world: World | None = None, use_gpu: bool = False, log=print) -> None:
    """One training process; rank 0 logs, evaluates on dev and writes checkpoints."""
    world = world or current_world()
    config = load_config(exp_dir / "train.yaml")
    tc = config.training
    say = log if world.is_main else (lambda *_: None)
    init_world(world, use_gpu)
    threads = configure_cpu(tc.num_threads)
    seed_everything(tc.seed)  # the same initial parameters on every rank
    tokenizer = load_tokenizer(recipe_dir / config.data.vocab, config.data.units)
    model = build_model_for_training(config, recipe_dir)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    amp = tc.amp != "off"
    if amp and not use_gpu:
        raise AsrError(f"training.amp: {tc.amp} runs on GPUs only; set training.amp: off for CPU training")
    say(f"stage 1: {config.model.name}, {n_params / 1e6:.2f} M parameters, {world.size} process(es) x {threads} "
        f"threads{', ' + tc.amp + ' mixed precision' if amp else ''}")
    if not use_gpu:  # built here on first use where setup did not (every rank takes the same lock)
        say(f"stage 1: CPU training kernels: {cpu_kernels.status()}")

    train_utts = _load_split(recipe_dir / config.data.train, "train", tokenizer, config, model, say)
    dev_utts = _load_split(recipe_dir / config.data.dev, "dev", tokenizer, config, model, say)
    slowest = min(config.speed_perturb.speeds) if config.speed_perturb.enabled else 1.0
    per_process = (f"at most {tc.max_frames_in_batch} frames" if tc.max_frames_in_batch else f"{tc.batch_size} utterances")
    shards = read_shard_list(recipe_dir / config.data.train_shards) if config.data.train_shards else None
    if shards is None:
        plan = plan_batches(train_utts, config.features, batch_size=tc.batch_size,
                            max_frames_in_batch=tc.max_frames_in_batch, world_size=world.size, slowest_speed=slowest)
        if plan.merged_tail:
            say(f"stage 1: the last batch had fewer utterances than the {world.size} processes; it joined the one before")
        say(f"stage 1: {len(plan.batches)} batches per epoch ({per_process} per process), {tc.accum_grad} per update")
    else:
        say(f"stage 1: reading {len(shards)} shards ({sum(s.count for s in shards)} utterances) of "
            f"{config.data.train_shards} sequentially, {per_process} per process and batch, {tc.accum_grad} per update")
    dev_batches = make_batches(dev_utts, max(tc.batch_size, 1))

    scheduler = build_scheduler(config.optim, config.scheduler)
    clip = paddle.nn.ClipGradByGlobalNorm(config.optim.grad_clip)
    opt_cls = paddle.optimizer.Adam if config.optim.name == "adam" else paddle.optimizer.AdamW
    optimizer = opt_cls(learning_rate=scheduler, parameters=model.parameters(),
                        weight_decay=config.optim.weight_decay or None, grad_clip=clip)
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0**15) if tc.amp == "fp16" else None

    ckpt_dir = exp_dir / "checkpoints"
    epoch, first_batch, step, epoch_loss, epoch_batches = 1, 0, 0, 0.0, 0
    if world.is_main and ckpt_dir.is_dir():
        stale = remove_stale_files(ckpt_dir)
        if stale:
            say(f"stage 1: removed {len(stale)} temporary files of an interrupted save: {', '.join(stale)}")
    barrier(world)
    latest = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if latest is not None:
        load_checkpoint(latest, model, optimizer, scaler)
        epoch, first_batch, step = latest["epoch"], latest["batch"], latest["step"]
        epoch_loss, epoch_batches = latest.get("epoch_loss_sum", 0.0), latest.get("epoch_batches", 0)
        if latest.get("world_size", world.size) != world.size:
            say(f"stage 1: the checkpoint was written by {latest['world_size']} processes, this run has {world.size}: "
                "the batches from here on differ from an uninterrupted run")
        if latest.get("epoch_done", latest["name"].isdigit()):
            epoch, first_batch, epoch_loss, epoch_batches = epoch + 1, 0, 0.0, 0
        say(f"stage 1: resumed from {latest['name']} at epoch {epoch}, batch {first_batch}, update {step}, "
            f"lr {optimizer.get_lr():.3e}")
    # The unused concat_linear layers (kept for PaddleSpeech checkpoint compatibility) get no gradient.
    train_model = paddle.DataParallel(model, find_unused_parameters=True) if world.size > 1 else model

    writer = None
    if world.is_main:
        from visualdl import LogWriter  # imported late: slow to import, and only rank 0 writes logs

        writer = LogWriter(logdir=str(exp_dir / "visualdl"))
        hparams = {"model": config.model.name, "encoder": config.model.encoder_type, "params_M": round(n_params / 1e6, 3),
                   "lr": config.optim.lr, "scheduler": config.scheduler.name, "batch_size": tc.batch_size,
                   "max_frames_in_batch": tc.max_frames_in_batch, "accum_grad": tc.accum_grad, "processes": world.size,
                   "ctc_weight": config.model.ctc_weight, "amp": tc.amp, "speed_perturb": str(config.speed_perturb.enabled)}
        writer.add_hparams(hparams, ["dev/loss", "dev/cer"])
    inputs = TrainingInputs(tokenizer, config.features, config.spec_augment, config.speed_perturb, tc.seed)
    keep = {u.key for u in train_utts}

    def epoch_batches_from(loader: BatchLoader, epoch: int, first: int) -> Iterator[tuple[int, Batch, float, bool]]:
        """(index in the epoch, this process's batch, its share of the global batch x processes,
        whether it is the epoch's last) from `first` on."""
        if shards is None:
            order = epoch_order(len(plan.batches), tc.seed, epoch)[first:]
            sizes = [len(plan.batches[j]) for j in order]
            parts = [rank_part(plan.batches[j], world.rank, world.size) for j in order]
            for k, batch in enumerate(loader.batches(parts, epoch)):
                yield first + k, batch, len(batch.keys) * world.size / sizes[k], first + k + 1 == len(plan.batches)
            return
        stream = shard_batches(shards, epoch=epoch, seed=tc.seed, rank=world.rank, world_size=world.size, inputs=inputs,
                               batch_size=tc.batch_size, max_frames_in_batch=tc.max_frames_in_batch,
                               shuffle_buffer=config.data.shuffle_buffer, sort_buffer=config.data.sort_buffer,
                               skip=first, keep=keep)
        # Processes read different shards and run out at different times: each step they agree on
        # the global batch size and on whether every one of them has a next batch; the epoch ends
        # for all at the first step where one has none (the others' remaining batches are not used
        # in this epoch, and their shards come in another order in the next).
        batch, index = next(stream, None), first
        while batch is not None:
            following = next(stream, None)
            size, ready = _global_sums([len(batch.keys), following is not None], world)
            yield index, batch, len(batch.keys) * world.size / size, ready < world.size
            if ready < world.size:
                return
            batch, index = following, index + 1
    amp_dtype = "bfloat16" if tc.amp == "bf16" else "float16"
    skipped, skipped_keys = 0, []
    stop = StopRequest()
    try:
        with BatchLoader(inputs, tc.num_workers) as loader:
            while epoch <= tc.max_epoch:
                train_model.train()
                t0 = t_log = time.time()
                frames_since_log = 0.0
                index = first_batch - 1
                for index, batch, share, last in epoch_batches_from(loader, epoch, first_batch):
                    # Dynamic-chunk sizes (python random) are the same on every rank; dropout differs per rank.
                    random.seed(_step_seed(tc.seed, epoch, index))
                    paddle.seed(_step_seed(tc.seed, epoch, index, world.rank))
                    update_now = (index + 1) % tc.accum_grad == 0 or last
                    sync = contextlib.nullcontext() if update_now or world.size == 1 else train_model.no_sync()
                    with paddle.amp.auto_cast(enable=amp, dtype=amp_dtype, level="O1"):
                        loss, parts_loss = train_model(paddle.to_tensor(batch.feats), paddle.to_tensor(batch.feat_lengths),
                                                       paddle.to_tensor(batch.labels), paddle.to_tensor(batch.label_lengths))
                    value = float(loss)
                    if not _all_finite(value, world):
                        skipped += 1
                        skipped_keys += batch.keys
                        say(f"stage 1: epoch {epoch} batch {index}: loss {value} (non-finite on some process), batch "
                            f"skipped ({skipped} so far); its utterances: {' '.join(batch.keys)}")
                        optimizer.clear_grad()
                        if skipped > tc.max_nonfinite_batches:
                            raise AsrError(
                                f"{skipped} batches had a NaN or infinite loss, more than training.max_nonfinite_batches="
                                f"{tc.max_nonfinite_batches}: training is diverging or the data is broken. Lower optim.lr "
                                f"(now {config.optim.lr}) or check the utterances of the last one: {' '.join(batch.keys)}")
                        continue
                    # The loss is a mean over this process's utterances and data parallelism averages
                    # the gradients of the processes: weighting by the share of the global batch makes
                    # that the mean over the global batch even when its parts differ in size.
                    with sync:
                        scaled = loss * (share / tc.accum_grad)
                        (scaler.scale(scaled) if scaler else scaled).backward()
                    epoch_loss, epoch_batches = epoch_loss + value, epoch_batches + 1
                    frames_since_log += float(batch.feat_lengths.sum())
                    if not update_now:
                        continue
                    log_now = (step + 1) % tc.log_interval == 0
                    if scaler:
                        scaler.unscale_(optimizer)
                    grad_norm = _grad_norm(model) if log_now else 0.0
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    # One process frees the gradients until the next backward (AISHELL Conformer,
                    # 8 x 500 frames: peak RSS 2.82 -> 2.64 GB, and no 185 MB memset a step).
                    # Data parallelism keeps them: its reducer fuses gradients into fixed buffers.
                    optimizer.clear_grad(set_to_zero=world.size > 1)
                    step += 1
                    lr = optimizer.get_lr()
                    if not getattr(scheduler, "per_epoch", False):
                        scheduler.step()
                    if log_now:
                        frames = _global_sums([frames_since_log], world)[0]
                        fps = frames / max(time.time() - t_log, 1e-9)
                        t_log, frames_since_log = time.time(), 0.0
                        if writer:
                            writer.add_scalar("train/loss", value, step)
                            for name, part in parts_loss.items():
                                writer.add_scalar(f"train/loss_{name}", float(part), step)
                            writer.add_scalar("train/lr", lr, step)
                            writer.add_scalar("train/grad_norm", grad_norm, step)
                            writer.add_scalar("train/frames_per_second", fps, step)
                        detail = " ".join(f"{k} {float(v):.3f}" for k, v in parts_loss.items())
                        say(f"stage 1: epoch {epoch} step {step} loss {value:.3f} ({detail}) lr {lr:.2e} "
                            f"grad norm {grad_norm:.2f} {fps:.0f} frames/s")
                    # Every process stops at the same update (a lone one would leave the others waiting in
                    # the gradient all-reduce); at the epoch's end the epoch checkpoint is written instead.
                    stopping = _global_sums([float(stop.requested)], world)[0] > 0 and not last
                    if (tc.checkpoint_interval and step % tc.checkpoint_interval == 0 or stopping) and not last:
                        if world.is_main:
                            save_checkpoint(ckpt_dir, f"step_{step}", model, optimizer, scaler,
                                            {"epoch": epoch, "batch": index + 1, "epoch_done": False, "step": step,
                                             "world_size": world.size, "epoch_loss_sum": epoch_loss,
                                             "epoch_batches": epoch_batches})
                            prune_checkpoints(ckpt_dir, tc.keep_checkpoints)
                        barrier(world)
                    if stopping:
                        raise TrainingStopped(f"step_{step}", step)
                if epoch_batches == 0 and index >= first_batch:
                    raise AsrError(f"training diverged: every batch of epoch {epoch} had a non-finite loss; lower "
                                   f"optim.lr (now {config.optim.lr}) or optim.grad_clip, and check the features")
                if getattr(scheduler, "per_epoch", False):
                    scheduler.step()
                train_loss = epoch_loss / max(epoch_batches, 1)
                if world.is_main:
                    dev, dev_metric = evaluate_dev(model, dev_batches, tokenizer, config)
                    for name, v in dev.items():
                        writer.add_scalar({"loss": "dev/loss", "cer": "dev/cer"}.get(name, f"dev/loss_{name}"), v, epoch)
                    writer.add_scalar("train/epoch_loss", train_loss, epoch)
                    save_checkpoint(ckpt_dir, str(epoch), model, optimizer, scaler,
                                    {"epoch": epoch, "batch": index + 1, "epoch_done": True, "step": step,
                                     "world_size": world.size,
                                     "dev_loss": dev["loss"], "dev_cer": dev["cer"], "train_loss": train_loss,
                                     "lr": optimizer.get_lr()})
                    prune_checkpoints(ckpt_dir, tc.keep_checkpoints)
                    dev_detail = " ".join(f"{k} {v:.3f}" for k, v in dev.items() if k not in ("loss", "cer"))
                    say(f"stage 1: epoch {epoch}/{tc.max_epoch} train loss {train_loss:.3f} dev loss {dev['loss']:.3f} "
                        f"({dev_detail}) dev {dev_metric} {dev['cer']:.2f} % ({time.time() - t0:.0f} s, {step} updates)")
                barrier(world)
                if _global_sums([float(stop.requested)], world)[0] > 0 and epoch < tc.max_epoch:
                    raise TrainingStopped(str(epoch), step)
                epoch, first_batch, epoch_loss, epoch_batches = epoch + 1, 0, 0.0, 0
    finally:
        stop.restore()
        if writer:
            writer.close()
    if world.is_main:
        summary = {"parameters": n_params, "steps": step, "skipped_batches": skipped,
                   "skipped_batch_utterances": skipped_keys[:1000], "processes": world.size}
        atomic_write_text(exp_dir / "train_summary.json", json.dumps(summary))
        fp = json.loads((exp_dir / RUN_RECORD).read_text(encoding="utf-8"))["fingerprint"]
        mark_complete(exp_dir, fp, **summary)
