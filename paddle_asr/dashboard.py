"""Serve VisualDL on the training logs of a recipe: `paddle-asr dashboard --logdir exp`.

Each training run writes exp/<name>/visualdl/ (train/logs.py); VisualDL shows every run under the
folder side by side. VisualDL's own default binds the machine's host name, which opens a
training server's dashboard to its whole network: here it binds 127.0.0.1 unless the user asks
for another address.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from paddle_asr.errors import AsrError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8040


def find_runs(logdir: Path) -> list[str]:
    """The runs VisualDL will list: folders under `logdir` holding vdlrecords files, relative."""
    runs = {p.parent.relative_to(logdir).as_posix() for p in Path(logdir).rglob("vdlrecords.*") if p.is_file()}
    return sorted(runs)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise AsrError(f"cannot serve the dashboard on {host}:{port}: {e.strerror}; "
                           "pick a free port with --port, or stop the program using it") from None


def dashboard_command(logdir: Path, host: str, port: int) -> list[str]:
    """VisualDL's own server in this interpreter, as an argument list (no shell involved)."""
    return [sys.executable, "-c", "import sys; from visualdl.server.app import main; sys.exit(main())",
            "--logdir", str(logdir), "--host", host, "--port", str(port)]


def serve_dashboard(logdir: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Check the folder and the port, then replace this process with the VisualDL server."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise AsrError(f"{logdir} does not exist: give the experiment folder of a recipe, e.g. recipes/demo/exp")
    runs = find_runs(logdir)
    if not runs:
        raise AsrError(f"no VisualDL logs under {logdir}: stage 1 (training) writes them to exp/<name>/visualdl/")
    if not 0 < port < 65536:
        raise AsrError(f"--port {port} is not a TCP port")
    _check_port(host, port)
    shown = "localhost" if host in ("127.0.0.1", "::1", "localhost") else host
    print(f"VisualDL on http://{shown}:{port}/app/scalar for {len(runs)} run(s) under {logdir}: {', '.join(runs)}",
          flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"note: bound to {host}, so other machines can reach this dashboard", flush=True)
    # VisualDL names each run by its path as given: from the folder above, they read
    # exp/<name>/visualdl, as when it is started in a recipe directory.
    logdir = logdir.resolve()
    os.chdir(logdir.parent)
    command = dashboard_command(Path(logdir.name), host, port)
    os.execv(command[0], command)
    return 0  # not reached
