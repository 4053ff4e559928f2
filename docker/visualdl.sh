#!/usr/bin/env bash
# Serve the VisualDL dashboard on a recipe's experiments (every run's exp/<name>/visualdl/).
# It binds 127.0.0.1 unless --host says otherwise, so only this machine can open it.
#   bash docker/visualdl.sh                                        # recipes/demo/exp on http://127.0.0.1:8040
#   bash docker/visualdl.sh --logdir recipes/aishell/exp --port 8041
# In the container the server must listen on the container's interface; publish the port on the
# host's loopback only, then open http://127.0.0.1:8040 (or tunnel it: ssh -L 8040:127.0.0.1:8040 server):
#   docker run --rm -p 127.0.0.1:8040:8040 -v "$PWD/exp:/workspace/paddle-asr/recipes/aishell/exp" \
#     paddle-asr bash docker/visualdl.sh --logdir recipes/aishell/exp --host 0.0.0.0
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
logdir="recipes/demo/exp"
host=127.0.0.1
port=8040
__option_names="logdir host port"
# shellcheck source=../utils/parse_options.sh
. "$root/utils/parse_options.sh"
if [ "$#" -gt 0 ]; then echo "$0: unexpected argument '$1' (options: --logdir DIR --host ADDR --port N)" >&2; exit 1; fi
# shellcheck source=../utils/setup_env.sh
. "$root/utils/setup_env.sh"
exec paddle-asr dashboard --logdir "$logdir" --host "$host" --port "$port"
