"""Learning-rate schedules.

Every scheduler is a `paddle.optimizer.lr.LRScheduler`, so it is passed to a Paddle optimizer as
`learning_rate=`. Its class attribute `per_epoch` tells the trainer when to call `.step()`:

* `per_epoch = False` (WarmupLR, WarmupCosineLR, CosineWarmRestartsLR): after every optimizer update (i.e. after
  gradient accumulation), never after a skipped batch;
* `per_epoch = True` (ExponentialDecayLR): once after every finished epoch.

Paddle's constructor already calls `step()` once, so a fresh scheduler has `last_epoch == 0` and
gives the lr of the first update (or first epoch).

Exact resume: every lr here is a closed-form function of the integer `last_epoch` (the number of
`.step()` calls after construction) and the constructor arguments. No other mutable state exists,
so Paddle's default `state_dict()` (`last_epoch`, `last_lr`) is complete: a scheduler built from the
same config and loaded with `set_state_dict()` continues with exactly the same lr sequence. (Paddle's
own `CosineAnnealingWarmRestarts` keeps `T_cur`/`T_i` as mutable attributes that its state dict does
not save, so it restarts the cosine period on resume; that is why the cosine schedule is written
here from `last_epoch`.)

Inside an optimizer: in Paddle 3.0, `Optimizer.state_dict()` stores the scheduler's state under the
key "LR_Scheduler" whenever `learning_rate` is an `LRScheduler`, and `Optimizer.set_state_dict()`
calls the scheduler's `set_state_dict()` with it (it asserts that the key is present), so saving and
loading the `.pdopt` file restores the schedule position too; tests/test_scheduler.py checks this.
"""

from __future__ import annotations

import math

from paddle.optimizer.lr import LRScheduler

from paddle_asr.config import OptimConfig, SchedulerConfig, check_config, scheduler_problems
from paddle_asr.errors import AsrError


def cosine_between(high: float, low: float, fraction: float) -> float:
    """Half a cosine from `high` (fraction 0) down to `low` (fraction 1): both cosine schedules' curve."""
    return low + (high - low) * (1 + math.cos(math.pi * fraction)) / 2


class WarmupLR(LRScheduler):
    """lr = base * warmup^0.5 * min(step^-0.5, step * warmup^-1.5), step from 1 (WeNet's and PaddleSpeech's WarmupLR).

    Stepped after every optimizer update; peaks at `base` when step == warmup_steps.
    """

    per_epoch = False

    def __init__(self, learning_rate: float, warmup_steps: int, last_epoch: int = -1) -> None:
        self.warmup_steps = warmup_steps
        super().__init__(learning_rate, last_epoch)

    def get_lr(self) -> float:
        step = self.last_epoch + 1  # paddle counts from 0; the formula counts updates from 1
        return self.base_lr * self.warmup_steps**0.5 * min(step**-0.5, step * self.warmup_steps**-1.5)


class ExponentialDecayLR(LRScheduler):
    """lr = base * gamma^epoch, epoch counted from 0 (PaddleSpeech's DeepSpeech2 trainer).

    Stepped once after every epoch: epoch 0 trains at `base`, epoch 1 at `base * gamma`, ...
    """

    per_epoch = True

    def __init__(self, learning_rate: float, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(learning_rate, last_epoch)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** max(self.last_epoch, 0)


class WarmupCosineLR(LRScheduler):
    """A linear rise to `base` over `warmup_steps` updates, then a cosine down to `eta_min` at `total_steps`.

    Stepped after every optimizer update; update n (from 1) trains at base * n / warmup_steps while
    n <= warmup_steps, then at eta_min + (base - eta_min) * (1 + cos(pi * t)) / 2 with t = (n -
    warmup_steps) / (total_steps - warmup_steps), and at eta_min after total_steps. Unlike the Noam
    decay of WarmupLR, the lr reaches its floor when training ends (on the demo's 7-epoch trial it
    read worse than WarmupLR all the same: recipes/demo/conf/conformer.yaml).
    """

    per_epoch = False

    def __init__(self, learning_rate: float, warmup_steps: int, total_steps: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        if not 1 <= warmup_steps < total_steps:
            raise AsrError(f"scheduler warmup_cosine: warmup_steps ({warmup_steps}) must be at least 1 and "
                           f"below the run's {total_steps} updates; lower scheduler.warmup_steps")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.eta_min = eta_min
        super().__init__(learning_rate, last_epoch)

    def get_lr(self) -> float:
        step = self.last_epoch + 1
        if step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        t = min((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        return cosine_between(self.base_lr, self.eta_min, t)


class CosineWarmRestartsLR(LRScheduler):
    """SGDR (Loshchilov & Hutter 2017), stepped after every optimizer update.

    Within a period of T_i updates, lr = eta_min + (base - eta_min) * (1 + cos(pi * t_cur / T_i)) / 2
    with t_cur = 0 .. T_i - 1; then the lr jumps back to `base` and T_{i+1} = T_i * t_mult,
    T_0 = t_0. The position (t_cur, T_i) is derived from `last_epoch` with integer arithmetic.
    """

    per_epoch = False

    def __init__(self, learning_rate: float, t_0: int, t_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.t_0 = t_0
        self.t_mult = t_mult
        self.eta_min = eta_min
        super().__init__(learning_rate, last_epoch)

    def period_position(self) -> tuple[int, int]:
        """(t_cur, T_i): updates done in the current period and that period's length."""
        n = max(self.last_epoch, 0)
        if self.t_mult == 1:
            return n % self.t_0, self.t_0
        period = self.t_0
        while n >= period:  # periods grow geometrically: O(log n) iterations
            n -= period
            period *= self.t_mult
        return n, period

    @property
    def t_cur(self) -> int:
        return self.period_position()[0]

    @property
    def t_i(self) -> int:
        return self.period_position()[1]

    def get_lr(self) -> float:
        t_cur, t_i = self.period_position()
        return cosine_between(self.base_lr, self.eta_min, t_cur / t_i)


def _validate(optim: OptimConfig, sched: SchedulerConfig) -> None:
    """The checks load_config makes (config.py), again for configs built in code."""
    check_config(sched, "the scheduler config", prefix="scheduler.")
    problem = next(scheduler_problems(optim, sched), None)
    if problem is not None:
        raise AsrError(problem)


def build_scheduler(optim: OptimConfig, sched: SchedulerConfig, total_steps: int | None = None) -> LRScheduler:
    """The scheduler named by `sched.name`; its `per_epoch` says when the trainer calls `.step()`.

    `total_steps`: the optimizer updates of the whole run, which warmup_cosine decays over (the
    trainer counts them from the batch plan; shards have no count, so warmup_cosine is refused there).
    """
    _validate(optim, sched)
    if sched.name == "warmuplr":
        return WarmupLR(optim.lr, sched.warmup_steps)
    if sched.name == "warmup_cosine":
        if total_steps is None:
            raise AsrError("scheduler warmup_cosine decays over the run's updates, which are unknown when "
                           "training reads shards; use scheduler.name warmuplr or train from a manifest")
        return WarmupCosineLR(optim.lr, sched.warmup_steps, total_steps, sched.eta_min)
    if sched.name == "exponential":
        return ExponentialDecayLR(optim.lr, sched.gamma)
    return CosineWarmRestartsLR(optim.lr, sched.t_0, sched.t_mult, sched.eta_min)
