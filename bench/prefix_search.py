"""CTC prefix beam search, compiled (decode/ctc_prefix_beam.cc) against the Python search, alternating
in one process: what one stream's search costs per chunk, as the streaming server runs it (a chunk of
16 encoder frames at a time, the beam read after each chunk for the partial result).

The log-posteriors are an AISHELL-size vocabulary (4,233 units) shaped like a trained model's (blank
on most frames, 30 % of frames with a strong unit; seeded), or a saved [T, V] float32 array
(`--log_probs FILE.npy`, e.g. a real model's CTC output). Prints one JSON line per implementation
and a table naming the CPU; checks that both give the same beam after every chunk.
    python bench/prefix_search.py [--seconds 10] [--beam 10] [--chunk 16] [--repeats 7] [--log_probs FILE.npy]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paddle_asr.decode import compiled_search  # noqa: E402
from paddle_asr.decode.search import CtcPrefixBeam  # noqa: E402
from paddle_asr.devices import cpu_model  # noqa: E402

AISHELL_UNITS = 4233
FRAMES_PER_SECOND = 25  # 40 ms encoder frames (4x subsampling of 10 ms fbank)


def peaky_log_probs(frames: int, vocab: int, seed: int = 0, quantum: float | None = None) -> np.ndarray:
    """Log-posteriors shaped like a trained model's: blank on most frames, a few strong units;
    rounded to multiples of `quantum` when given (exact ties among candidates and prefix scores)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(frames, vocab))
    logits[:, 0] += rng.uniform(0, 12, size=frames)
    speech = rng.random(frames) < 0.3
    logits[speech, rng.integers(1, vocab, size=int(speech.sum()))] += 10.0
    lp = logits - logits.max(axis=1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
    if quantum:
        lp = np.round(lp / quantum) * quantum
    return lp.astype(np.float32)


def stream(log_probs: np.ndarray, beam_size: int, chunk: int, compiled: bool) -> tuple[float, list]:
    """Seconds for one stream's search chunk by chunk, and the best prefix after each chunk."""
    beam = CtcPrefixBeam(beam_size)
    if not compiled:
        beam._compiled = None
    bests = []
    start = time.perf_counter()
    for i in range(0, len(log_probs), chunk):
        beam.advance(log_probs[i: i + chunk])
        bests.append(beam.best())
    elapsed = time.perf_counter() - start
    return elapsed, bests + [beam.nbest()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--log_probs", default="", help="a [T, V] float32 .npy instead of the generated posteriors")
    args = ap.parse_args(argv)
    if compiled_search.get() is None:
        sys.exit(f"the compiled search is unavailable here: {compiled_search.status()}")
    lp = (np.load(args.log_probs).astype(np.float32) if args.log_probs
          else peaky_log_probs(int(args.seconds * FRAMES_PER_SECOND), AISHELL_UNITS))
    chunks = -(-len(lp) // args.chunk)
    times: dict[str, list[float]] = {"python": [], "compiled": []}
    results = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name in times:
            elapsed, results[name] = stream(lp, args.beam, args.chunk, name == "compiled")
            times[name].append(elapsed)
    same = results["python"] == results["compiled"]
    rows = []
    for name, runs in times.items():
        median = statistics.median(runs[1:])
        rows.append({"bench": "prefix_search", "impl": name, "frames": len(lp), "vocab": lp.shape[1],
                     "beam": args.beam, "chunk": args.chunk, "median_ms": round(median * 1e3, 2),
                     "ms_per_chunk": round(median * 1e3 / chunks, 3), "same_beams": same})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nCPU: {cpu_model()}; {len(lp)} frames x {lp.shape[1]} units, beam {args.beam}, chunks of {args.chunk} "
          f"frames; median of {args.repeats} alternating runs; same best prefix after every chunk and same "
          f"n-best: {'yes' if same else 'NO'}\n")
    print("| search | whole stream (ms) | a chunk (ms) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['median_ms']} | {r['ms_per_chunk']} |")
    print(f"\ncompiled / python: {rows[1]['median_ms'] / rows[0]['median_ms']:.3f}")
    if not same:
        sys.exit("the two searches disagree")


if __name__ == "__main__":
    main()
