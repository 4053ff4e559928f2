"""Synthesis, reuse and publication of a generated corpus (the demos' stage -1).

A corpus is built in a temporary sibling folder and renamed into place with its completion record
(`artifacts.mark_complete`: `.done`, fingerprinting the generation parameters, with the parameters and
the summary); a later run with the same parameters reuses it, any other regenerates it. A run killed
half-way leaves only the temporary folder, never a corpus that looks whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from paddle_asr.artifacts import fingerprint, mark_complete, read_record


def reuse_complete(root: Path, params: dict, force: bool, log: Callable[[str], None], tag: str) -> dict | None:
    """The summary of a complete corpus at `root` made with `params` (with reused=True), else None."""
    info = read_record(Path(root))
    if info is None or force:
        return None
    if info.get("fingerprint") == _fingerprint(params) and "summary" in info:
        log(f"[{tag}] {root} is complete with the same parameters; skipping generation (use --force to regenerate)")
        return {**info["summary"], "path": str(root), "reused": True}
    log(f"[{tag}] {root} exists with different parameters; regenerating")
    return None


def _fingerprint(params: dict) -> str:
    return fingerprint("generated-corpus-v1", params)


def partial_dir(root: Path) -> Path:
    """A fresh temporary folder beside `root` to build the corpus in."""
    tmp = Path(root).parent / f".{Path(root).name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, root: Path, params: dict, summary: dict) -> None:
    """Write the completion record last (its presence means everything else is complete), then swap `tmp` in."""
    mark_complete(Path(tmp), _fingerprint(params), params=params, summary=summary)
    old = Path(root).parent / f".{Path(root).name}.old-{os.getpid()}"
    if Path(root).exists():
        Path(root).rename(old)
    Path(tmp).rename(root)
    shutil.rmtree(old, ignore_errors=True)


def synthesise_speakers(worker: Callable[[dict], dict[str, float]], jobs: list[dict], num_workers: int,
                        log: Callable[[str], None], tag: str, start: float, variants: dict[str, str] | None = None,
                        scratch: Path | None = None) -> dict[str, float]:
    """Run `worker` (a module-level function) on each speaker's job, each in a fresh spawned process,
    and merge the {utterance id: seconds} it returns. With `variants` (random espeak voices: {name:
    variant file text}), each job's "espeak_data" names an espeak-ng data folder in `scratch` that holds
    them; the folder is not part of the corpus and is removed afterwards.

    libespeak-ng keeps hidden state from one utterance to the next (espeak_synth explains), so the
    audio is reproducible only when each speaker is rendered in a process that synthesised nothing
    before: `spawn` and one task per child.
    """
    import multiprocessing as mp
    import time

    from paddle_asr.data.corpora.espeak_synth import data_with_variants

    overlay = data_with_variants(Path(scratch) / "espeak-ng-data", variants) if variants else None
    if overlay is not None:
        jobs = [{**job, "espeak_data": str(overlay)} for job in jobs]
    durations: dict[str, float] = {}
    try:
        with mp.get_context("spawn").Pool(max(1, min(num_workers, len(jobs))), maxtasksperchild=1) as pool:
            for k, d in enumerate(pool.imap_unordered(worker, jobs, chunksize=1), 1):
                durations.update(d)
                if k % 5 == 0 or k == len(jobs):
                    log(f"[{tag}] synthesised {k}/{len(jobs)} speakers ({time.time() - start:.0f}s)")
    finally:
        if overlay is not None:
            shutil.rmtree(overlay, ignore_errors=True)
    return durations
