"""Data-parallel training on Paddle's own launcher: who am I, and how to start N of me.

`paddle-asr train --nproc 2` (CPU), `--gpus 0,1,2,3` (one process per GPU) and `--ips host1,host2`
(the same command on every machine) re-run the train command under
`python -m paddle.distributed.launch`, which sets each worker's rank in its environment. Rank 0
alone writes logs and checkpoints; the workers' own output goes to exp/<name>/launch/workerlog.N.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import paddle

from paddle_asr.errors import AsrError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """This process's place, from the variables paddle.distributed.launch sets (one process: rank 0 of 1)."""
    return World(int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1)))


def init_world(world: World, use_gpu: bool) -> None:
    """Pick the device and join the process group (gradients are then averaged across ranks)."""
    if use_gpu:
        from paddle_asr.devices import require

        require("cuda", "--gpus (training on GPUs; --nproc N trains with CPU processes)")
        if world.size > 1:
            require("nccl", "data-parallel training on several GPUs")
        paddle.set_device(f"gpu:{int(os.environ.get('FLAGS_selected_gpus', '0').split(',')[0])}")
    else:
        paddle.set_device("cpu")
    if world.size > 1:
        paddle.distributed.init_parallel_env()


def barrier(world: World) -> None:
    if world.size > 1:
        paddle.distributed.barrier()


def launch_command(train_args: list[str], *, nproc: int, gpus: str, ips: str, log_dir: Path) -> list[str]:
    """The command that starts the data-parallel workers, each running `train_args` with --worker."""
    if gpus and nproc > 1:
        raise AsrError("give --gpus (one process per GPU) or --nproc (CPU processes), not both")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(log_dir)]
    cmd += ["--devices", gpus] if gpus else ["--nproc_per_node", str(nproc)]
    if ips:
        cmd += ["--ips", ips]
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    return cmd + [str(cli), *train_args, "--worker"]
