#!/usr/bin/env bash
# The tools only the tests need, on top of utils/setup_env.sh (sourced first): the pinned wheels
# of requirements-test.txt in the same environment, and Debian's chromium + chromium-driver for
# the dashboard test. Sourced by tests/run.sh; quiet when everything is already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(command -v "${PADDLE_ASR_PYTHON:-python}")"
env_dir="$("$python" -c 'import sys; print(sys.prefix)')"
test_stamp="$env_dir/.paddle_asr_test_tools"
want_test="$(sha256sum < "$root/requirements-test.txt" | cut -d' ' -f1)"

if [ ! -f "$test_stamp" ] || [ "$(cat "$test_stamp")" != "$want_test" ]; then
  echo "[setup] installing the test tools (shellcheck, hadolint, selenium)"
  installer=("$python" -m pip install --disable-pip-version-check -q)
  # In the environment utils/setup_env.sh made (not the GPU image's), its uv_install: the same pins
  # with uv's speed, byte-compiled, through the same mirror.
  [ ! -x "$env_dir/bin/uv" ] || installer=(uv_install)
  if ! "${installer[@]}" -r "$root/requirements-test.txt" > "$env_dir/setup-test.log" 2>&1; then
    echo "[setup] installing the test tools failed; the installer's output is in $env_dir/setup-test.log:" >&2
    tail -n 20 "$env_dir/setup-test.log" >&2
    exit 1
  fi
  echo "$want_test" > "$test_stamp"
fi

if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  echo "[setup] installing chromium and chromium-driver (Debian packages) for the dashboard test"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
      sudo_cmd=(sudo -n)
    else
      echo "[setup] the dashboard test needs chromium and chromium-driver: install them as root" \
           "(apt-get install chromium chromium-driver), then run tests/run.sh again" >&2
      exit 1
    fi
  fi
  apt_log="$(mktemp)"
  if ! { "${sudo_cmd[@]}" apt-get update -q && \
         DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q chromium chromium-driver; } \
       > "$apt_log" 2>&1; then
    echo "[setup] apt-get could not install chromium; its output:" >&2
    tail -n 20 "$apt_log" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi
