#!/usr/bin/env bash
# Set up the environment when needed (as run.sh does) plus the test tools, then run the test suite.
#   bash tests/run.sh               # everything
#   bash tests/run.sh -k score      # pytest options pass through
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../utils/setup_env.sh
. "$root/utils/setup_env.sh"
# shellcheck source=../utils/setup_test_tools.sh
. "$root/utils/setup_test_tools.sh"
cd "$root"
# Lint and import order first (pyproject.toml [tool.ruff]): seconds, and a failure names file:line.
ruff check --quiet .
exec python -m pytest -q -p no:cacheprovider "$@" tests
