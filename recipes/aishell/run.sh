#!/usr/bin/env bash
# AISHELL-1 (Mandarin, CER). Stages and options: see ../../local/run_stages.sh or --help.
#   bash run.sh --stage 0 --stop_stage 3 --data_dir /path/to/aishell
# --data_dir holds data_aishell/ (or data_aishell.tgz) as downloaded from OpenSLR 33.
# Streaming model, decoded over whole utterances and chunk by chunk:
#   bash run.sh --config conf/chunk_conformer.yaml --decode_configs "conf/decode.yaml conf/chunk_decode.yaml"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec bash ../../local/run_stages.sh --corpus aishell --data_dir /export/data/aishell --config conf/conformer.yaml "$@"
