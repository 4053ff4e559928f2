#!/usr/bin/env bash
# Stage -1 for AISHELL-1: check that the corpus is where --data_dir says. Downloading 15 GB is
# left to the user (OpenSLR resource 33: data_aishell.tgz, md5 2f494334227864a8a8fec932999db9d8).
set -euo pipefail
data_dir=""
# shellcheck disable=SC2034  # accepted from run_stages.sh like every recipe's, unused here
force=false
# shellcheck disable=SC2034  # accepted from run_stages.sh like every recipe's, unused here
sets=""  # AISHELL-1 has fixed train/dev/test splits
__option_names="data_dir force sets"
# shellcheck source=../../../utils/parse_options.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../../utils/parse_options.sh"
if [ -d "$data_dir/data_aishell" ] || [ -f "$data_dir/data_aishell.tgz" ] || [ -d "$data_dir/wav" ]; then
  echo "AISHELL-1 found under $data_dir"
else
  echo "AISHELL-1 not found under '$data_dir': download data_aishell.tgz from OpenSLR resource 33 into it" >&2
  echo "(md5 2f494334227864a8a8fec932999db9d8), then re-run with --data_dir $data_dir" >&2
  exit 1
fi
