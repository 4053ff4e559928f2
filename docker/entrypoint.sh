#!/usr/bin/env bash
# Container entry point: report the devices Paddle sees, then run the given command
# (default: the demo recipe). Example:
#   docker run --gpus all -v /data/aishell:/data/aishell paddle-asr \
#     bash run.sh --recipe aishell --stage 0 --stop_stage 6 --data_dir /data/aishell
set -euo pipefail
python -c 'import paddle; print("paddle", paddle.__version__, "CUDA devices:", paddle.device.cuda.device_count())'
exec "$@"
