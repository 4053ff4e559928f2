"""Reuse and publication of a generated corpus (the demos' stage -1).

A corpus is built in a temporary sibling folder and renamed into place with its `.complete` marker,
which records the generation parameters; a later run with the same parameters reuses it, any other
regenerates it. A run killed half-way leaves only the temporary folder, never a corpus that looks whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

MARKER = ".complete"


def reuse_complete(root: Path, params: dict, force: bool, log: Callable[[str], None], tag: str) -> dict | None:
    """The summary of a complete corpus at `root` made with `params` (with reused=True), else None."""
    marker = Path(root) / MARKER
    if not marker.is_file() or force:
        return None
    info = json.loads(marker.read_text(encoding="utf-8"))
    if info.get("params") == params:
        log(f"[{tag}] {root} is complete with the same parameters; skipping generation (use --force to regenerate)")
        return {**info["summary"], "path": str(root), "reused": True}
    log(f"[{tag}] {root} exists with different parameters; regenerating")
    return None


def partial_dir(root: Path) -> Path:
    """A fresh temporary folder beside `root` to build the corpus in."""
    tmp = Path(root).parent / f".{Path(root).name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, root: Path, params: dict, summary: dict) -> None:
    """Write the marker last (its presence means everything else is complete), then swap `tmp` in."""
    (Path(tmp) / MARKER).write_text(json.dumps({"params": params, "summary": summary}, ensure_ascii=False, indent=1),
                                    encoding="utf-8")
    old = Path(root).parent / f".{Path(root).name}.old-{os.getpid()}"
    if Path(root).exists():
        Path(root).rename(old)
    Path(tmp).rename(root)
    shutil.rmtree(old, ignore_errors=True)
