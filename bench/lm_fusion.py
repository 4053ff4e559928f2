"""Cost of CTC beam search with character-LM fusion (paddle_asr.decode.lm_search) on one
AISHELL-sized utterance: 300 frames over a 4233-unit vocabulary, against the plain prefix beam search.

The posteriors imitate a trained model's: one peak per frame (a character every 5th frame, blank in
between) holding 60-99 % of the mass, the rest spread over a few random competitors and a tiny floor.
The LM is a character 3-gram built from a small hand-written corpus (timing depends on the vocabulary
and the beam, not on what the LM learnt).
    python bench/lm_fusion.py --repeats 3
Prints one JSON line per search setting.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from inputs import AISHELL_UNITS  # noqa: E402

CORPUS = [
    "今天 天气 很 好", "我们 去 公园 玩", "明天 可能 下雨", "今天 我们 在 家 看书",
    "天气 好 我们 就 去 公园", "明天 我们 去 公园 看 花", "下雨 了 我们 在 家", "公园 里 的 花 很 好看",
    "我们 明天 去 看 电影", "今天 的 电影 很 好看",
]
CHARS = sorted({c for line in CORPUS for c in line if not c.isspace()})
SETTINGS = [
    ("prefix beam 10, no LM", None),
    ("beam 10, LM", dict(alpha=2.2, beta=4.3, beam_size=10)),
    ("beam 100, LM, cutoff 0.99/40", dict(alpha=2.2, beta=4.3, beam_size=100, cutoff_prob=0.99, cutoff_top_n=40)),
    ("beam 500, LM, cutoff 0.99/40 (PaddleSpeech AISHELL)",
     dict(alpha=2.2, beta=4.3, beam_size=500, cutoff_prob=0.99, cutoff_top_n=40)),
]


def char_lm():
    """A character 3-gram from the corpus (twice) and 100 sentences of a fixed Markov chain over its characters."""
    from paddle_asr.lm import NgramScorer, build_kneser_ney, transcript_words

    rng = random.Random(6)
    markov = []
    for _ in range(100):
        s = [rng.choice(CHARS[:8])]
        for _ in range(rng.randint(2, 12)):
            s.append(CHARS[(CHARS.index(s[-1]) + rng.choice((1, 1, 1, 2, 5))) % len(CHARS)])
        markov.append(s)
    return NgramScorer(build_kneser_ney([transcript_words(line) for line in CORPUS * 2] + markov, 3)[0])


def posteriors(frames: int, seed: int = 3) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = ["<blank>", "<unk>", *CHARS, *[chr(0x4E00 + i) for i in range(AISHELL_UNITS - 3 - len(CHARS))], "<eos>"]
    probs = np.full((frames, len(vocab)), 1e-8)
    for t in range(frames):
        peak = vocab.index(rng.choice(CHARS)) if t % 5 == 0 else 0
        rivals = rng.choice(len(vocab), size=4, replace=False)
        probs[t, rivals] = rng.dirichlet(np.ones(4)) * rng.uniform(0.01, 0.4)
        probs[t, peak] += 1.0 - probs[t].sum()
    return vocab, np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> list[dict]:
    from paddle_asr.decode.lm_search import ctc_beam_search_with_lm
    from paddle_asr.decode.search import ctc_prefix_beam_search

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    lm = char_lm()
    vocab, lp = posteriors(args.frames)
    results = []
    for name, kwargs in SETTINGS:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            if kwargs is None:
                ctc_prefix_beam_search(lp, 10)
            else:
                ctc_beam_search_with_lm(lp, vocab, lm, **kwargs)
            times.append(time.perf_counter() - start)
        result = {"what": "lm_fusion", "impl": "paddle-asr", "search": name, "frames": args.frames,
                  "units": len(vocab), "median_s": statistics.median(times), "min_s": min(times),
                  "max_s": max(times), "runs": len(times)}
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
