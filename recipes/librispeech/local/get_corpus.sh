#!/usr/bin/env bash
# Stage -1 of LibriSpeech: download (OpenSLR 12, md5-checked, resumable) and unpack the subsets that
# --sets names and <data_dir>/LibriSpeech does not hold yet. Without network, put the archives or
# the unpacked LibriSpeech/ folder in data_dir yourself.
set -euo pipefail
data_dir=""
# shellcheck disable=SC2034  # accepted from run_stages.sh like every recipe's, unused here
force=false
sets=""
base_url="https://www.openslr.org/resources/12/"
__option_names="data_dir force sets base_url"
# shellcheck source=../../../utils/parse_options.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../../utils/parse_options.sh"
# "name=a,b name2=c" -> a,b,c (each subset once)
subsets="$(tr ' ' '\n' <<< "$sets" | cut -d= -f2 | tr ',' '\n' | grep -v '^$' | sort -u | paste -sd, -)"
paddle-asr get-librispeech --data_dir "$data_dir" --subsets "$subsets" --base_url "$base_url"
