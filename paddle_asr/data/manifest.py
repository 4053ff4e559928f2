"""Kaldi `wav.scp` / `text` files and the JSON-lines manifest (key, wav, duration, text)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from paddle_asr.artifacts import atomic_write_text
from paddle_asr.errors import AsrError


@dataclass
class Utterance:
    key: str
    wav: str
    duration: float
    text: str


def read_kaldi_table(path: Path) -> dict[str, str]:
    """`ID value...` lines; a missing value is an empty string. Errors name file and line."""
    path = Path(path)
    table: dict[str, str] = {}
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise AsrError(f"cannot read {path} ({e})") from None
    for lineno, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise AsrError(f"{path}:{lineno}: not UTF-8 text; convert the file to UTF-8") from None
        if not line:
            continue
        key, _, value = line.partition(" ")
        if key in table:
            raise AsrError(f"{path}:{lineno}: utterance id '{key}' appears twice; ids must be unique")
        table[key] = value.strip()
    return table


def write_kaldi_table(table: dict[str, str], path: Path) -> None:
    atomic_write_text(Path(path), "".join(f"{k} {v}\n" if v else f"{k}\n" for k, v in sorted(table.items())))


def write_manifest(utts: list[Utterance], path: Path) -> None:
    lines = (json.dumps(asdict(u), ensure_ascii=False) + "\n" for u in sorted(utts, key=lambda u: u.key))
    atomic_write_text(Path(path), "".join(lines))


def read_manifest(path: Path) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"manifest {path} does not exist; run stage 0 (data preparation) first")
    utts = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise AsrError(f"{path}:{lineno}: not UTF-8 text, so not a manifest (data.list, JSON lines) of "
                               "stage 0") from None
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                utts.append(Utterance(str(d["key"]), str(d["wav"]), float(d["duration"]), str(d["text"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise AsrError(
                    f"{path}:{lineno}: not a manifest line with key, wav, duration, text ({e}); re-run stage 0"
                ) from None
    return utts
