#!/usr/bin/env bash
# Create the project's virtual environment (.venv) when it is missing or out of date, then print
# nothing but one line. Sourced by run.sh and tests/run.sh; exports PATH with the venv first.
# Uses an existing environment instead when PADDLE_ASR_PYTHON names its python.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PADDLE_ASR_VENV:-$root/.venv}"
stamp="$venv/.paddle_asr_installed"
want="$(cat "$root/requirements.txt" "$root/requirements-no-deps.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"

uv_version=0.13.8
pip_install() { "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
uv_install() {
  local index="${PIP_INDEX_URL:-$("$venv/bin/python" -m pip config get global.index-url 2> /dev/null || true)}" mirror=()
  [ -z "$index" ] || [ -n "${UV_DEFAULT_INDEX:-}" ] || mirror=(--default-index "$index")
  "$venv/bin/uv" pip install --python "$venv/bin/python" -q --compile-bytecode "${mirror[@]}" "$@"
}
install_pins() {  # $1: pip_install or uv_install
  "$1" -r "$root/requirements.txt" && "$1" --no-deps -r "$root/requirements-no-deps.txt" && "$1" --no-deps -e "$root"
}

if [ -n "${PADDLE_ASR_PYTHON:-}" ]; then
  python_dir="$(dirname "$(command -v "$PADDLE_ASR_PYTHON")")"
  export PATH="$python_dir:$PATH"
elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  export PATH="$venv/bin:$PATH"
else
  echo "[setup] creating the Python environment in $venv (one time, about a minute)"
  python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required")'
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  log_file="$venv/setup.log"
  # requirements-no-deps.txt: PaddleSpeech's client without PaddleSpeech's dependencies (see its comments).
  # numpy is pinned below 2: paddleslim pins an OpenCV built for numpy 1, which prints an ABI
  # warning under numpy 2. The full pinned list keeps every machine on the same versions.
  # uv installs the pinned wheels and byte-compiles them in parallel (as pip does, one by one: with
  # PYTHONDONTWRITEBYTECODE set, every process would compile what it imports), in about half pip's
  # time on 2 cores (bench/RESULTS.md). uv does not read pip's configuration, so a pip mirror
  # (PIP_INDEX_URL or pip's global.index-url) is passed on; where uv fails all the same, pip
  # installs the same pins.
  if ! { pip_install "uv==$uv_version" && install_pins uv_install; } >"$log_file" 2>&1; then
    echo "[setup] uv could not install the environment (its output: $log_file); installing with pip instead"
    if ! { pip_install --upgrade pip && install_pins pip_install; } >>"$log_file" 2>&1; then
      echo "[setup] installing the environment failed; the pip output is in $log_file:" >&2
      tail -n 20 "$log_file" >&2
      exit 1
    fi
  fi
  echo "$want" > "$stamp"
  export PATH="$venv/bin:$PATH"
  echo "[setup] environment ready: $("$venv/bin/python" -W ignore -c 'import paddle; print("paddlepaddle", paddle.__version__)')"
fi

# The compiled CPU training kernels (paddle_asr/models/cpu_kernels.cc), built once per machine into
# ~/.cache/paddle_asr/kernels so that the first training step does not wait ~20 s for them. Where
# they cannot be built, a warning says so and training runs on Paddle's kernels. Not in an image
# (PADDLE_ASR_PYTHON): GPU training never uses them, and CPU training builds them when it starts.
# The compiled CTC prefix beam search (paddle_asr/decode/ctc_prefix_beam.cc) of every decoder and the
# server is built the same way (a few seconds; the image builds it in its Dockerfile); without it they
# run the Python search, the same beam, slower.
if [ -z "${PADDLE_ASR_PYTHON:-}" ]; then
  python -W ignore -m paddle_asr.models.cpu_kernels --quiet || true
  python -W ignore -m paddle_asr.decode.compiled_search --quiet || true
fi
