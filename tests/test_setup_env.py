"""utils/setup_env.sh, the setup that run.sh and tests/run.sh share: where uv cannot install the
pinned environment, pip installs the same pins; where pip cannot either, one clear error."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(venv: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_ASR_", "UV_", "VIRTUAL_ENV"))}
    # The kernels the setup builds for this throwaway venv go beside it, not into the user's cache.
    environ.update(PADDLE_ASR_VENV=str(venv), PADDLE_ASR_KERNEL_CACHE=str(venv.parent / "kernels"), UV_NO_CACHE="1",
                   **env)
    return subprocess.run(["bash", "-c", '. utils/setup_env.sh && python -c "import sys; print(sys.prefix)"'],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=1500)


def _pins(python: str) -> dict[str, str]:
    """name -> version of requirements.txt's lines for this Python version ("3.11")."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"python_version": python}):
            pins[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return pins


def test_pip_installs_the_same_pins_when_uv_cannot_reach_the_index(tmp_path):
    venv = tmp_path / "venv"
    proc = _setup(venv, UV_DEFAULT_INDEX=f"http://127.0.0.1:{_closed_port()}/simple")
    assert proc.returncode == 0, proc.stdout + proc.stderr + (venv / "setup.log").read_text()[-3000:]
    assert "[setup] uv could not install the environment" in proc.stdout
    assert f"its output: {venv}/setup.log" in proc.stdout
    assert "[setup] environment ready: paddlepaddle 3.0.0" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == str(venv)  # the venv's python comes first on PATH
    freeze = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    installed = {canonicalize_name(n): v for n, v in (x.split("==") for x in freeze.split())}
    python = subprocess.run([str(venv / "bin/python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    wrong = {n: (v, installed.get(n)) for n, v in _pins(python).items() if installed.get(n) != v}
    assert not wrong, wrong
    again = _setup(venv, UV_DEFAULT_INDEX=f"http://127.0.0.1:{_closed_port()}/simple")
    assert again.returncode == 0 and "[setup]" not in again.stdout  # installed once, then reused


def test_setup_stops_with_the_log_when_neither_uv_nor_pip_can_install(tmp_path):
    venv = tmp_path / "venv"
    dead = f"http://127.0.0.1:{_closed_port()}/simple"
    # pip without its configuration files, local wheel folders or cache: only the dead index.
    proc = _setup(venv, UV_DEFAULT_INDEX=dead, PIP_INDEX_URL=dead, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="",
                  PIP_RETRIES="0", PIP_NO_CACHE_DIR="1")
    assert proc.returncode == 1
    assert "[setup] uv could not install the environment" in proc.stdout
    assert f"[setup] installing the environment failed; the pip output is in {venv}/setup.log" in proc.stderr
    assert not (venv / ".paddle_asr_installed").exists()  # a re-run installs again
