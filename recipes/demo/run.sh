#!/usr/bin/env bash
# The embedded demo: a synthetic Mandarin corpus in AISHELL-1's exact layout, generated offline by
# stage -1, then the real AISHELL preparation and every later stage, on a CPU in minutes.
#   bash run.sh                      # stages -1..8
#   bash run.sh --stage 3 --stop_stage 3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec bash ../../local/run_stages.sh --corpus aishell --data_dir corpus --config conf/conformer.yaml --decode_configs "conf/decode.yaml conf/chunk_decode.yaml" \
  --test_sets "test test_unseen_voices" --stage -1 "$@"
