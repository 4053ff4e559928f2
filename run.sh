#!/usr/bin/env bash
# Run a recipe from the top of the repository:
#   bash run.sh                                  # the embedded demo, every stage (-1..8), on CPU
#   bash run.sh --recipe aishell --stage 0 --stop_stage 3 --data_dir /data/aishell
# Creates the Python environment (.venv) on first use. Options after --recipe go to the recipe.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
recipe=demo
recipes() { local d; for d in "$root"/recipes/*/; do d="${d%/}"; printf '%s ' "${d##*/}"; done; }
if [ "${1:-}" = "--recipe" ]; then
  [ "$#" -ge 2 ] || { echo "run.sh: --recipe needs a name (one of: $(recipes))" >&2; exit 1; }
  recipe="$2"; shift 2
elif [[ "${1:-}" == --recipe=* ]]; then
  recipe="${1#--recipe=}"; shift
fi
if [ ! -f "$root/recipes/$recipe/run.sh" ]; then
  echo "run.sh: no recipe '$recipe'; available: $(recipes)" >&2
  exit 1
fi
# shellcheck source=utils/setup_env.sh
. "$root/utils/setup_env.sh"
exec bash "$root/recipes/$recipe/run.sh" "$@"
