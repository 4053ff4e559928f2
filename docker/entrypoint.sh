#!/usr/bin/env bash
# Container entry point: report what this Paddle can do on the GPUs it sees (CUDA, cuDNN, NCCL,
# AMP, TensorRT), then run the given command in the project folder (default: the demo recipe).
#   docker run --gpus all paddle-asr                                   # the demo, every stage
#   docker run --gpus all -v /data/aishell:/data/aishell paddle-asr \
#     bash recipes/aishell/run.sh --data_dir /data/aishell --stage 0 --stop_stage 6 --gpus 0,1,2,3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
paddle-asr devices || echo "[entrypoint] could not query the devices; continuing" >&2
if [ "$#" -eq 0 ]; then set -- bash run.sh; fi
exec "$@"
