#!/usr/bin/env bash
# Stage -1 of the demo: synthesise the Mandarin corpus (espeak-ng voices, fixed seed) into
# <data_dir>/data_aishell, laid out exactly like AISHELL-1. Reused when already complete.
set -euo pipefail
data_dir=corpus
force=false
# shellcheck disable=SC2034  # accepted from run_stages.sh like every recipe's, unused here
sets=""  # the Mandarin demo has AISHELL's fixed splits
__option_names="data_dir force sets"
# shellcheck source=../../../utils/parse_options.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../../utils/parse_options.sh"
args=(--out_dir "$data_dir")
[ "$force" = true ] && args+=(--force)
paddle-asr make-demo-corpus "${args[@]}"
