#!/usr/bin/env bash
# Stage -1 of the English demo: synthesise the corpus (espeak-ng English voices, fixed seed) into
# <data_dir>/LibriSpeech/{train-clean-100,dev-clean,test-clean,test-unseen-voices}, laid out exactly like
# LibriSpeech.
# Reused when already complete.
set -euo pipefail
data_dir=corpus
force=false
# shellcheck disable=SC2034  # accepted from run_stages.sh like every recipe's, unused here
sets=""  # the demo always has these four subsets
__option_names="data_dir force sets"
# shellcheck source=../../../utils/parse_options.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../../utils/parse_options.sh"
args=(--out_dir "$data_dir")
[ "$force" = true ] && args+=(--force)
paddle-asr make-librispeech-demo "${args[@]}"
