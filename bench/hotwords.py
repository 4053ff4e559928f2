"""Hotwords (contextual biasing) on a test set: what a context list does to recall and to errors.

Draws `--num` words (seeded) from the test transcripts, and as many words that occur in no test
transcript from another manifest (`--other`, e.g. the training set), writes each list to a file and
decodes the test set (ctc_prefix_beam_search and attention_rescoring; one encoder pass shared by
every run) without a list, with the test words and with the absent words, at each `--scores`.
For Mandarin (transcripts without spaces) a word is a span of 2-4 characters of a transcript; for
space-separated transcripts, a whole word. Prints, per method and score:

- recall of the listed words: of their occurrences in the references, the share the hypotheses hold
  (per utterance, min(occurrences in reference, occurrences in hypothesis));
- the error rate on the utterances whose reference holds none of the listed words, without and with
  the list (what biasing costs where it has nothing to find);
- the error rate of the whole test set with the list of absent words, against none (false insertions),
  and how many times the hypotheses then hold an absent word.

    python bench/hotwords.py --bundle recipes/demo/exp/conformer/export/fp32 \\
        --data recipes/demo/data/test/data.list --other recipes/demo/data/train/data.list --scores 1,2,3,4

With `--transcript` (word-segmented transcripts, as AISHELL-1's and the demo corpus's transcript file)
Mandarin words are whole words of 2 or more characters. `--seeds 0,1,2` draws a pair of lists per
seed; a summary line per method and score pools the recall and gives the largest error increases.
The lists are written to `--out_dir` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paddle_asr.config import DecodeConfig  # noqa: E402
from paddle_asr.data.dataset import iterate_batches, make_batches  # noqa: E402
from paddle_asr.data.manifest import read_kaldi_table, read_manifest  # noqa: E402
from paddle_asr.data.tokenizer import UNK  # noqa: E402
from paddle_asr.decode.context_graph import load_context_graph  # noqa: E402
from paddle_asr.decode.recognizer import Recognizer  # noqa: E402
from paddle_asr.export.bundle import read_bundle  # noqa: E402
from paddle_asr.export.runtime import load_backend  # noqa: E402
from paddle_asr.metrics.score import score  # noqa: E402

METHODS = ["ctc_prefix_beam_search", "attention_rescoring"]


def words_of(text: str, rng: random.Random) -> str:
    """One word of a transcript: a whole word when it has spaces, else a span of 2-4 characters."""
    if " " in text.strip():
        return rng.choice(text.split())
    n = rng.randint(2, min(4, len(text)))
    start = rng.randrange(len(text) - n + 1)
    return text[start: start + n]


def count(text: str, word: str) -> int:
    """Occurrences of `word` in `text`: as a whole word in space-separated text, else as a substring."""
    return f" {text} ".count(f" {word} ") if " " in text else text.count(word)


def draw_words(texts: list[str], num: int, rng: random.Random, known, avoid: list[str] | None = None) -> list[str]:
    """`num` distinct words drawn from `texts`, each made of the model's units (`known(word)`); with
    `avoid`, only words that occur in none of those transcripts."""
    words: list[str] = []
    for _ in range(200 * num):
        if len(words) == num:
            return words
        text = rng.choice(texts)
        if len(text.replace(" ", "")) < 2:
            continue
        word = words_of(text, rng)
        if word in words or len(word) < 2 or not known(word):
            continue
        if avoid is not None and any(count(t, word) for t in avoid):
            continue
        words.append(word)
    raise SystemExit(f"could not draw {num} words; give more transcripts")


def recall(refs: dict[str, str], hyps: dict[str, str], words: list[str]) -> tuple[int, int]:
    """(occurrences of the words in the references that the hypotheses hold, all such occurrences)."""
    found = total = 0
    for key, ref in refs.items():
        for w in words:
            n = count(ref, w)
            total += n
            found += min(n, count(hyps.get(key, ""), w))
    return found, total


def encode_all(bundle: Path, data: Path, beam_size: int, threads: int, runtime: str):
    """(tokenizer, backend, [(keys, enc, enc_lengths, ctc_lp)] per batch): the encoder runs once."""
    meta, features, tokenizer = read_bundle(bundle)
    backend = load_backend(bundle, meta, num_threads=threads, runtime=runtime)
    rec = Recognizer(backend, DecodeConfig(methods=METHODS, beam_size=beam_size), tokenizer.units)
    encoded = []
    batches = make_batches(read_manifest(data), 16)
    for batch in iterate_batches(batches, tokenizer, features, train=False):
        encoded.append((batch.keys, *rec.encode(batch.feats, batch.feat_lengths)))
    return tokenizer, backend, encoded


def decode_all(backend, tokenizer, encoded, beam_size: int, context) -> tuple[dict[str, dict[str, str]], float]:
    """{method: {key: text}} of every batch with one context graph (or None), and the search seconds."""
    rec = Recognizer(backend, DecodeConfig(methods=METHODS, beam_size=beam_size), tokenizer.units, context)
    hyps: dict[str, dict[str, str]] = {m: {} for m in METHODS}
    t = time.perf_counter()
    for keys, enc, enc_lengths, ctc_lp in encoded:
        for method, ids in rec.search(enc, enc_lengths, ctc_lp).items():
            hyps[method].update({k: tokenizer.decode(seq) for k, seq in zip(keys, ids)})
    return hyps, time.perf_counter() - t


def error_rate(refs: dict[str, str], hyps: dict[str, str], keys: list[str]) -> float:
    return score({k: refs[k] for k in keys}, {k: hyps[k] for k in keys}, char=True).overall.rate


def report(method: str, s: float, refs, base, listed, absent, words, absent_words) -> dict:
    """The figures of one method at one score."""
    clean = [k for k, r in refs.items() if not any(count(r, w) for w in words)]
    everyone = list(refs)
    f0, n = recall(refs, base, words)
    f1, _ = recall(refs, listed, words)
    return {"what": "hotwords", "method": method, "context_score": s, "words": len(words),
            "occurrences": n, "recall_before": round(100 * f0 / n, 2), "recall_after": round(100 * f1 / n, 2),
            "clean_utterances": len(clean), "clean_error_before": round(error_rate(refs, base, clean), 2),
            "clean_error_after": round(error_rate(refs, listed, clean), 2),
            "error_all_before": round(error_rate(refs, base, everyone), 2),
            "error_all_absent_list": round(error_rate(refs, absent, everyone), 2),
            "absent_words_in_hyps": sum(count(h, w) for h in absent.values() for w in absent_words),
            "absent_words_in_hyps_before": sum(count(h, w) for h in base.values() for w in absent_words)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the test manifest (data.list)")
    ap.add_argument("--other", required=True, type=Path, help="a manifest to draw words absent from the test set from")
    ap.add_argument("--transcript", type=Path, default=None,
                    help="word-segmented transcripts ('key word word ...', as AISHELL-1's transcript file): "
                         "draw whole words of 2 or more characters instead of spans")
    ap.add_argument("--num", type=int, default=20, help="words per list")
    ap.add_argument("--seeds", default="0", help="one pair of lists per seed, comma-separated")
    ap.add_argument("--scores", default="1,2,3,4", help="context scores to try, comma-separated")
    ap.add_argument("--beam_size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default="paddle", choices=["paddle", "onnx"])
    ap.add_argument("--out_dir", type=Path, default=None, help="where the word lists are written")
    return ap.parse_args(argv)


def word_lists(args, tokenizer, seed: int, out_dir: Path) -> tuple[list[str], list[str], dict[str, Path]]:
    """The seed's test words and absent words, and the files holding them."""
    test_utts, other_utts = read_manifest(args.data), read_manifest(args.other)
    tests = sorted(u.text for u in test_utts)
    if args.transcript:
        segmented = read_kaldi_table(args.transcript)
        sources = [[segmented[u.key] for u in utts if u.key in segmented] for utts in (test_utts, other_utts)]
    else:
        sources = [tests, sorted(u.text for u in other_utts)]

    def known(word: str) -> bool:
        return all(p != UNK and p in tokenizer.index for p in tokenizer.pieces(word))

    rng = random.Random(seed)
    words = draw_words(sources[0], args.num, rng, known)
    absent = draw_words(sources[1], args.num, rng, known, avoid=tests)
    files = {name: out_dir / f"{name}_seed{seed}.txt" for name in ("test_words", "absent_words")}
    for name, listed in (("test_words", words), ("absent_words", absent)):
        files[name].write_text("".join(f"{w}\n" for w in listed), encoding="utf-8")
    print(f"seed {seed}: test words {' '.join(words)}; absent words {' '.join(absent)}", flush=True)
    return words, absent, files


def summary(rows: list[dict]) -> None:
    """Per method and score, over the seeds: pooled recall, and the largest error-rate increases."""
    for method in METHODS:
        for s in sorted({r["context_score"] for r in rows}):
            rs = [r for r in rows if r["method"] == method and r["context_score"] == s]
            n = sum(r["occurrences"] for r in rs)
            before = sum(r["recall_before"] * r["occurrences"] for r in rs) / n
            after = sum(r["recall_after"] * r["occurrences"] for r in rs) / n
            clean = max(r["clean_error_after"] - r["clean_error_before"] for r in rs)
            absent = max(r["error_all_absent_list"] - r["error_all_before"] for r in rs)
            print(json.dumps({"what": "hotwords_summary", "method": method, "context_score": s, "lists": len(rs),
                              "occurrences": n, "recall_before": round(before, 2), "recall_after": round(after, 2),
                              "worst_clean_error_increase": round(clean, 2),
                              "worst_absent_list_error_increase": round(absent, 2)}), flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    tokenizer, backend, encoded = encode_all(args.bundle, args.data, args.beam_size, args.threads, args.runtime)
    refs = {u.key: u.text for u in read_manifest(args.data)}
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="hotwords_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    base, base_s = decode_all(backend, tokenizer, encoded, args.beam_size, None)
    rows = []
    for seed in (int(x) for x in args.seeds.split(",")):
        words, absent_words, files = word_lists(args, tokenizer, seed, out_dir)
        for s in (float(x) for x in args.scores.split(",")):
            listed, listed_s = decode_all(backend, tokenizer, encoded, args.beam_size,
                                          load_context_graph(files["test_words"], tokenizer, s))
            absent, _ = decode_all(backend, tokenizer, encoded, args.beam_size,
                                   load_context_graph(files["absent_words"], tokenizer, s))
            for m in METHODS:
                row = report(m, s, refs, base[m], listed[m], absent[m], words, absent_words)
                row.update(seed=seed, search_seconds_plain=round(base_s, 2), search_seconds_biased=round(listed_s, 2))
                print(json.dumps(row, ensure_ascii=False), flush=True)
                rows.append(row)
    summary(rows)
    return rows


if __name__ == "__main__":
    main()
