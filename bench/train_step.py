"""Training-step time and peak memory of a recipe's model on fixed random batches.

One step = forward, loss, backward, optimizer update (Adam, global-norm clipping), as stage 1 runs
it. Prints one JSON line: the median, min and max of `--repeats` timed steps after `--warmup`.
    python bench/train_step.py --config recipes/aishell/conf/conformer.yaml --batch 8 --frames 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from inputs import AISHELL_UNITS, random_batch  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "recipes/aishell/conf/conformer.yaml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=20, help="label length per utterance")
    ap.add_argument("--vocab", type=int, default=AISHELL_UNITS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mode", default="dygraph", choices=["dygraph"])
    ap.add_argument("--profile", default="", help="write Paddle's profiler summary of one step to this file")
    args = ap.parse_args(argv)

    import paddle

    from paddle_asr.config import load_config
    from paddle_asr.cpu_settings import configure_cpu
    from paddle_asr.models import cpu_kernels
    from paddle_asr.models.registry import build_model

    configure_cpu(args.threads)
    paddle.seed(0)
    config = load_config(Path(args.config))
    config = dataclasses.replace(config, vocab_size=args.vocab, input_dim=config.features.num_mel_bins)
    model = build_model(config)
    model.train()
    clip = paddle.nn.ClipGradByGlobalNorm(config.optim.grad_clip)
    optimizer = paddle.optimizer.Adam(learning_rate=1e-4, parameters=model.parameters(), grad_clip=clip)
    arrays = random_batch(args.batch, args.frames, config.features.num_mel_bins, args.vocab, args.tokens)
    tensors = [paddle.to_tensor(a) for a in arrays]

    def step() -> float:
        t0 = time.perf_counter()
        loss, _ = model(*tensors)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)  # as stage 1 does in one process
        float(loss)  # the host sync stage 1 also makes (the loss is logged and checked)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    if args.profile:
        import paddle.profiler as profiler

        prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU])
        prof.start()
        step()
        prof.stop()
        with open(args.profile, "w") as f:
            sys_stdout, sys.stdout = sys.stdout, f
            try:
                prof.summary(sorted_by=profiler.SortedKeys.CPUTotal, op_detail=True, thread_sep=False, time_unit="ms")
            finally:
                sys.stdout = sys_stdout
    times = [step() for _ in range(args.repeats)]
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    result = {"what": "train_step", "model": config.model.name, "impl": "paddle-asr", "config": Path(args.config).name,
              "mode": args.mode, "batch": args.batch, "frames": args.frames, "threads": args.threads,
              "trainable_parameters": n_params, "median_s": statistics.median(times), "min_s": min(times),
              "max_s": max(times), "runs": len(times),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "mkl_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE"),
              "cpu_kernels": cpu_kernels.status().split(" ")[0].rstrip(":")}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
