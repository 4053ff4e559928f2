#!/usr/bin/env bash
# Set up the environment when needed (as run.sh does), then run the test suite.
#   bash tests/run.sh               # everything
#   bash tests/run.sh -k score      # pytest options pass through
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/utils/setup_env.sh"
cd "$root"
exec python -m pytest -q -p no:cacheprovider "$@" tests
