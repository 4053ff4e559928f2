#!/usr/bin/env bash
# The benchmarks, ours and PaddleSpeech's side by side in one run, printed as JSON lines and a
# markdown table (bench/RESULTS.md holds a run of it).
#   bash bench/run.sh                 # training step, RTF, data pipeline
#   bash bench/run.sh --demo true     # and the wall time of the whole demo (about 15 minutes more)
#   bash bench/run.sh --peer false    # ours only (no PaddleSpeech side environment)
# The PaddleSpeech peer runs in .venv-paddlespeech (bash tools/setup_paddlespeech_env.sh makes it);
# runs alternate ours/theirs so that a slow moment of the machine hits both.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peer=true
demo=false
repeats=5
out="$root/exp/bench/results.jsonl"
__option_names="peer demo repeats out"
# shellcheck source=../utils/parse_options.sh
. "$root/utils/parse_options.sh"
# shellcheck source=../utils/setup_env.sh
. "$root/utils/setup_env.sh"
# shellcheck source=../utils/log.sh
. "$root/utils/log.sh"
cd "$root"
mkdir -p "$(dirname "$out")"
: > "$out"
ours() { python "bench/$1.py" "${@:2}" 2>> "$root/exp/bench/stderr.log" | grep '^{' | tee -a "$out"; }
run_peer() { "$root/.venv-paddlespeech/bin/python" bench/peer_paddlespeech.py "$@" 2>> "$root/exp/bench/stderr.log" | grep '^{' | tee -a "$out"; }
# The peer as its users run it: PaddleSpeech makes no MKL kernel choice.
theirs() { ( unset MKL_DEBUG_CPU_TYPE; run_peer "$@" ); }
# The MKL kernel choice ours makes at import (paddle_asr/cpu_settings.py: AVX2 kernels on AMD CPUs),
# empty where it makes none. Where it makes one, the peer also runs with it, so that the report
# tells what that setting gives and what the rest of our code gives.
our_mkl="$(python -c 'import os, paddle_asr; print(os.environ.get("MKL_DEBUG_CPU_TYPE", ""))')"
theirs_with_our_mkl() {
  if [ -n "$our_mkl" ]; then
    MKL_DEBUG_CPU_TYPE="$our_mkl" run_peer "$@"
  fi
}
if [ "$peer" = true ] && [ ! -x "$root/.venv-paddlespeech/bin/python" ]; then
  log "no PaddleSpeech side environment: creating it (bash tools/setup_paddlespeech_env.sh)"
  bash tools/setup_paddlespeech_env.sh
fi

stage_banner bench "training step"
# Two rounds at 8 x 500 (the figure issue 10 sets a target for), one at 16 x 500.
for batch_round in 8:1 8:2 16:1; do
  batch="${batch_round%:*}"
  log "batch $batch x 500 frames, round ${batch_round#*:}"
  ours train_step --batch "$batch" --frames 500 --repeats "$repeats"
  if [ "$peer" = true ]; then
    theirs train --batch "$batch" --frames 500 --repeats "$repeats"
    theirs_with_our_mkl train --batch "$batch" --frames 500 --repeats "$repeats"
  fi
done

for batch in 8 16; do
  log "DeepSpeech2, batch $batch x 500 frames"
  ours train_step --config recipes/aishell/conf/deepspeech2.yaml --batch "$batch" --frames 500 --repeats 3
done

stage_banner bench "encoder + CTC real-time factor"
ours rtf --seconds 10 --threads 1,2 --repeats "$repeats"
if [ "$peer" = true ]; then
  for threads in 1 2; do
    theirs rtf --seconds 10 --threads "$threads" --repeats "$repeats"
    theirs_with_our_mkl rtf --seconds 10 --threads "$threads" --repeats "$repeats"
  done
fi

stage_banner bench "data pipeline"
ours data_pipeline --workers 0,2 --repeats 3

if [ "$demo" = true ]; then
  stage_banner bench "the whole demo"
  copy="$(mktemp -d)"
  git clone -q "$root" "$copy/paddle-asr"
  start=$(date +%s)
  PADDLE_ASR_VENV="$root/.venv" bash "$copy/paddle-asr/run.sh" > "$root/exp/bench/demo.log" 2>&1
  end=$(date +%s)
  printf '{"what": "demo", "seconds": %s, "note": "fresh clone, existing environment, stages -1..7"}\n' \
    "$((end - start))" | tee -a "$out"
  rm -rf "$copy"
fi

stage_banner bench "report"
python bench/report.py "$out"
