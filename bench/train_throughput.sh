#!/usr/bin/env bash
# Training throughput of the demo model on the demo data: one process with every core against
# data-parallel processes with one core each. Prints frames/s (feature frames, all processes
# together) as the trainer logs them to VisualDL. Needs the demo's stage 0 (bash run.sh --stop_stage 0).
#   bash bench/train_throughput.sh [epochs]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../utils/setup_env.sh
. "$root/utils/setup_env.sh"
epochs="${1:-1}"
cd "$root/recipes/demo"
[ -f data/train/data.list ] || { echo "run 'bash run.sh --stop_stage 0' in recipes/demo first" >&2; exit 1; }
cores="$(nproc)"
work="$(mktemp -d exp/.bench_throughput.XXXXXX)"
trap 'rm -rf "$work"' EXIT
for procs in 1 "$cores"; do
  threads=$(( cores / procs ))
  conf="$work/p$procs.yaml"
  printf 'base: %s/conf/conformer.yaml\ntraining:\n  max_epoch: %s\n  num_threads: %s\n  log_interval: 10\n' \
    "$(pwd)" "$epochs" "$threads" > "$conf"
  start=$(date +%s.%N)
  paddle-asr train --config "$conf" --exp_dir "$work/p$procs" --nproc "$procs" > "$work/p$procs.log" 2>&1
  end=$(date +%s.%N)
  python - "$work/p$procs" "$procs" "$threads" "$start" "$end" <<'PY'
import json, sys
from pathlib import Path
from paddle_asr.train.logs import read_visualdl
exp, procs, threads, start, end = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
scalars, _ = read_visualdl(exp / "visualdl")
fps = [v for _, v in scalars["train/frames_per_second"]][1:]  # the first interval includes start-up
summary = json.loads((exp / "train_summary.json").read_text())
print(f"{procs} process(es) x {threads} thread(s): {sum(fps) / len(fps):.0f} frames/s in training steps "
      f"(median {sorted(fps)[len(fps) // 2]:.0f}), {summary['steps']} updates, {end - start:.0f} s wall incl. start-up and dev")
PY
done
