"""Writing outputs so that a killed stage never leaves something a re-run would trust.

Files are written to a temporary sibling and renamed into place. A stage's output directory is
complete only when its `.done` marker exists, and the marker records a fingerprint of the inputs
and settings that produced it. A re-run either reuses a complete output with the same fingerprint
or deletes the directory and rebuilds it whole - never a mix - and says which.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DONE_MARKER = ".done"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path`, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fingerprint(*parts: Any) -> str:
    """A stable hash of settings and input files (files by path, size and mtime)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            st = part.stat()
            part = f"{part.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def is_complete(out_dir: Path, fp: str) -> bool:
    marker = out_dir / DONE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fp
    except (json.JSONDecodeError, OSError):
        return False


def mark_complete(out_dir: Path, fp: str, **info: Any) -> None:
    atomic_write_text(out_dir / DONE_MARKER, json.dumps({"fingerprint": fp, **info}, ensure_ascii=False))


def reuse_or_clear(out_dir: Path, fp: str, what: str, force: bool, log=print) -> bool:
    """Return True when `out_dir` is complete for `fp` and may be reused; otherwise empty it.

    Prints which of the two happens, so a user re-running a stage always knows.
    """
    if not force and is_complete(out_dir, fp):
        log(f"{what}: reusing the complete output in {out_dir} (same inputs and settings; --force rebuilds)")
        return True
    if out_dir.exists():
        reason = "forced" if force else "incomplete or built from other inputs"
        log(f"{what}: rebuilding {out_dir} from scratch ({reason})")
        shutil.rmtree(out_dir)
    return False


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to `target` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        # An existing output is moved aside, not deleted, until the new one is in place.
        backup = target.with_name(f"{tmp.name}.old") if target.exists() else None
        if backup is not None:
            os.replace(target, backup)
        try:
            os.replace(tmp, target)
        except BaseException:
            if backup is not None:
                os.replace(backup, target)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
