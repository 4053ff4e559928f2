#!/usr/bin/env bash
# AISHELL-1 (Mandarin, CER). Stages and options: see ../../local/run_stages.sh or --help.
#   bash run.sh --stage 0 --stop_stage 3 --data_dir /path/to/aishell
# --data_dir holds data_aishell/ (or data_aishell.tgz) as downloaded from OpenSLR 33.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec bash ../../local/run_stages.sh --corpus aishell --data_dir /export/data/aishell --config conf/conformer.yaml "$@"
