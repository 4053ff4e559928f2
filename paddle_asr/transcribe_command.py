"""`paddle-asr transcribe`: files, folders and `wav.scp` lists through the Python API
(`api.SpeechRecognizer`), each transcript printed as soon as it is done (Kaldi text or JSON lines),
with a progress bar on a terminal and every input that failed named at the end."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from paddle_asr.api import SpeechRecognizer
from paddle_asr.data.audio import audio_info
from paddle_asr.data.audio_inputs import AudioInput
from paddle_asr.errors import AsrError
from paddle_asr.transcribe import TranscribeOptions


def total_seconds(inputs: list[AudioInput]) -> float:
    """Audio duration from the file headers (for the progress bar); unreadable files count 0."""
    total = 0.0
    for item in inputs:
        try:
            total += audio_info(item.path).duration
        except AsrError:
            pass
    return total


def transcribe_inputs(bundle: Path, inputs: list[AudioInput], options: TranscribeOptions,
                      *, output_format: str = "text", show_progress: bool | None = None,
                      out: TextIO | None = None, err: TextIO | None = None) -> list[tuple[str, str]]:
    """Print each recording's transcript as it is done; return [(path, reason)] of the failures.

    show_progress None: a progress bar when `err` is a terminal. `out` and `err` default to the
    streams of the moment (sys.stdout, sys.stderr), not those at import.
    """
    out, err = out or sys.stdout, err or sys.stderr
    from tqdm import tqdm

    if output_format not in ("text", "json"):
        raise AsrError(f"--format must be text or json, got {output_format!r}")
    recognizer = SpeechRecognizer(bundle, options)
    if show_progress is None:
        show_progress = err.isatty()
    bar = tqdm(total=total_seconds(inputs) if show_progress else 0, unit="s", unit_scale=True,
               desc="audio", file=err, disable=not show_progress, dynamic_ncols=True)
    failures: list[tuple[str, str]] = []
    started, audio_s = time.perf_counter(), 0.0
    with bar:
        for result in recognizer.transcribe_many(inputs, progress=bar.update):
            if result.error:
                failures.append((str(result.path), result.error))
                bar.write(f"error: {result.error}", file=err)
                continue
            audio_s += result.duration
            line = (json.dumps(result.to_json(), ensure_ascii=False) if output_format == "json"
                    else f"{result.key} {result.text}".rstrip())
            if show_progress:
                bar.write(line, file=out)
            else:
                print(line, file=out, flush=True)
    elapsed = time.perf_counter() - started
    print(f"transcribed {len(inputs) - len(failures)} of {len(inputs)} recordings ({audio_s:.1f} s of audio) in "
          f"{elapsed:.1f} s (RTF {elapsed / audio_s if audio_s else 0:.3f})", file=err, flush=True)
    return failures


def transcribe_paths(bundle: Path, paths: list[str], options: TranscribeOptions, *,
                     output_format: str = "text", show_progress: bool | None = None, err: TextIO | None = None) -> int:
    """`paddle-asr transcribe`: audio files, folders or wav.scp lists with `bundle`. Every input that
    cannot be found, read or transcribed is named on `err`; returns 1 when there was any, else 0."""
    from paddle_asr.data.audio_inputs import collect_inputs

    err = err or sys.stderr
    inputs, problems = collect_inputs(paths)
    for where, reason in problems:
        print(f"error: {where}: {reason}", file=err, flush=True)
    failures = transcribe_inputs(Path(bundle), inputs, options, output_format=output_format,
                                 show_progress=show_progress, err=err) if inputs else []
    bad = [where for where, _ in problems] + [path for path, _ in failures]
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        print(f"error: {len(bad)} input(s) could not be transcribed: {shown}", file=err, flush=True)
        return 1
    return 0
