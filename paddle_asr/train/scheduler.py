"""Learning-rate schedules, stepped once per optimizer update (after gradient accumulation)."""

from __future__ import annotations

from paddle.optimizer.lr import LRScheduler

from paddle_asr.config import OptimConfig, SchedulerConfig
from paddle_asr.errors import AsrError


class WarmupLR(LRScheduler):
    """lr = base * warmup^0.5 * min(step^-0.5, step * warmup^-1.5), step from 1 (REFERENCE §5.1)."""

    def __init__(self, learning_rate: float, warmup_steps: int, last_epoch: int = -1) -> None:
        self.warmup_steps = warmup_steps
        super().__init__(learning_rate, last_epoch)

    def get_lr(self) -> float:
        step = self.last_epoch + 1  # paddle counts from 0; the formula counts updates from 1
        return self.base_lr * self.warmup_steps**0.5 * min(step**-0.5, step * self.warmup_steps**-1.5)


def build_scheduler(optim: OptimConfig, sched: SchedulerConfig) -> LRScheduler:
    if sched.name == "warmuplr":
        return WarmupLR(optim.lr, sched.warmup_steps)
    raise AsrError(f"scheduler.name '{sched.name}' unknown; known: warmuplr")
