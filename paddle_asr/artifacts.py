"""Writing outputs so that a killed stage never leaves something a re-run would trust.

Files are written to a temporary sibling and renamed into place. Every stage output - a directory
(data/, an export, a result folder) or a single file (an averaged checkpoint, CMVN, an LM) - is
complete only when its completion record exists: `<dir>/.done` or `<file>.done`, one JSON object
whose "fingerprint" hashes the inputs and settings that produced it (plus whatever the stage adds).
The record is written last. A re-run (`reuse_or_clear`) either reuses a complete output with the
same fingerprint or removes it and rebuilds it whole - never a mix - and says which.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from paddle_asr.errors import AsrError

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
            if not part.exists():
                raise AsrError(f"{part} does not exist: it is an input of this step; run the stage that writes it, "
                               "or pass the right path")
            st = part.stat()
            part = f"{part.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def done_marker(output: Path) -> Path:
    """Where the completion record of `output` lives: inside a directory, beside a file (`<file>.done`)."""
    output = Path(output)
    return output.with_name(output.name + DONE_MARKER) if output.is_file() else output / DONE_MARKER


def read_record(output: Path) -> dict | None:
    """The completion record of `output`, or None when it has none (never finished, or being rebuilt)."""
    output = Path(output)
    if not output.exists():
        return None
    try:
        record = json.loads(done_marker(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_complete(output: Path, fp: str) -> bool:
    """Whether `output` (a directory or a file) was finished from the inputs and settings hashed in `fp`."""
    record = read_record(output)
    return record is not None and record.get("fingerprint") == fp


def mark_complete(output: Path, fp: str, **info: Any) -> None:
    """Record that `output` is whole and was built from `fp`; call it last, once `output` is in place."""
    atomic_write_text(done_marker(output), json.dumps({"fingerprint": fp, **info}, ensure_ascii=False, indent=1))


def clear_output(output: Path) -> None:
    """Remove `output` and its record: a directory entirely, a file with its `<file>.done` beside it."""
    output = Path(output)
    if output.is_dir():
        shutil.rmtree(output)
        return
    # The record first, and even with no file: a half-removed output must not look complete.
    output.with_name(output.name + DONE_MARKER).unlink(missing_ok=True)
    output.unlink(missing_ok=True)


def reuse_or_clear(outputs: Path | Sequence[Path], fp: str, what: str, force: bool, log: Callable[[str], None] = print,
                   *, noun: str = "output", verify: Callable[[Path, dict], bool] | None = None) -> bool:
    """Return True when every output is complete for `fp` and may be reused; otherwise remove them all.

    The one way a stage reuses finished work: call this first, build the outputs when it returns
    False, then `mark_complete` each. `verify(output, record)` may check more than the fingerprint
    (e.g. that files listed in the record still have their sizes). Logs which of the two happens,
    so a user re-running a stage always knows.
    """
    outputs = [Path(outputs)] if isinstance(outputs, (str, Path)) else [Path(o) for o in outputs]
    records = [read_record(o) for o in outputs]
    if not force and all(r is not None and r.get("fingerprint") == fp for r in records) and (
            verify is None or all(verify(o, r) for o, r in zip(outputs, records))):
        for o in outputs:
            log(f"{what}: reusing the complete {noun} in {o} (same inputs and settings; --force rebuilds)")
        return True
    reason = "forced" if force else "incomplete or built from other inputs"
    for o in outputs:
        if o.exists():
            log(f"{what}: rebuilding {o} from scratch ({reason})")
        clear_output(o)
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
