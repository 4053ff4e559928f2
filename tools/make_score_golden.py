#!/usr/bin/env python
"""Golden fixtures for paddle_asr.metrics.score, printed by the original compute-wer.py.

Generates a deterministic set (fixed seed, Python ``random``) of reference/hypothesis pairs
that exercises every rule of compute-wer.py (docs/scoring.md) -- Mandarin characters, mixed-case
English words, digits and number words, mixed lines, full-width and attached ASCII
punctuation, ``<...>`` tags, U+3000 and tabs, alignment ties, insertions at both ends, empty
references and hypotheses, identical pairs, East-Asian ambiguous/full/half-width characters,
Japanese kana and long utterances -- and stores, next to ``ref.txt`` / ``hyp.txt``, what the
original script prints for each option set (``expected_char1_v1.txt`` for ``--char=1 --v=1``
and so on). The worked examples of section 7.1 are included as ids U2 and U3.

Every reference id has a hypothesis line (the hypothesis file is in shuffled order), because
the original silently skips a reference without one, where our scorer counts it as
deletions. That case lives in a separate small set (``missing_ref.txt``, ``missing_hyp.txt``,
``expected_missing_char1_v1.txt``), compared against ``--keep-missing-skip``.

Regenerate (needs the side environment made by tools/setup_paddlespeech_env.sh; this script
itself only needs the standard library and runs the original in a subprocess)::

    python tools/make_score_golden.py
    python tools/make_score_golden.py --python .venv-paddlespeech/bin/python \\
        --compute-wer .venv-paddlespeech/lib/python3.11/site-packages/paddlespeech/dataset/s2t/compute_wer.py

The output is byte-for-byte reproducible; tests/test_score_golden.py checks our scorer against it.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIDE_ENV = REPO / ".venv-paddlespeech"
SEED = 20240711
OPTION_SETS = {  # fixture suffix -> options of the original script
    "char1_v1": ("--char=1", "--v=1"),
    "char1_v0": ("--char=1", "--v=0"),
    "char1_v2": ("--char=1", "--v=2"),
    "char0_v1": ("--char=0", "--v=1"),
}

ZH = ("今天天气很好我们去公园散步吧北京上海广州深圳中国人民银行发展改革委员会研究生命科学的起源"
      "房地产中介协会分析市场价格上涨下降明年继续保持稳定增长语音识别模型训练数据")
EN = ["the", "Quick", "BROWN", "fox", "jumps", "Over", "lazy", "DOG", "it", "was", "First",
      "great", "sorrow", "Hello", "world", "don't", "e-mail", "AI", "GPU", "iPhone", "McDonald",
      "C++", "R&D", "snake_case", "a@b.com", "x=1", "#tag", "semi;colon", "well-known", "I'm"]
NUMBERS = ["2024", "3.5", "100", "007", "1,000", "twenty-one", "Ninety", "一百二十", "50%",
           "#1", "+86", "2", "0", "3", "-7", "1e5", "12:30", "4G", "五", "第"]
FW_PUNCT = "、。！，；？：「」『』《》︰"
ATTACHED = ["FIRST,", "hello!", "?what", ",lead", "!bang", "a,b", "x?y", "ok?!", "end.",
            "(paren)", "quote\"", "wait...", "yes;", "no:"]
TAGS = ["<unk>", "<noise>", "<unk><noise>", "a<unk>b", "<sil", "<噪音>", "[laughter]",
        "<UNK>", "<spoken_noise>", "<>", "x<y", "word<unk>"]
WIDE = ["Ω", "α", "é", "café", "°", "×", "25℃", "“引号”", "…", "·", "§", "ＡＢＣ", "ａｂ", "１２３",
        "ｶﾀｶﾅ", "한국어", "5Ω", "naïve", "ΣΑ", "µs", "½"]
HIRAGANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
JA_WORDS = ["こんにちは", "ありがとう", "コーヒー", "東京", "ラーメン", "すし", "ニュース", "です", "ます"]


def _zh(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(ZH) for _ in range(rng.randint(lo, hi))]


def _case(rng: random.Random, word: str) -> str:
    return rng.choice([str.lower, str.upper, str.title, lambda w: w])(word)


def _edit(rng: random.Random, toks: list[str], pool: list[str], p: float) -> list[str]:
    """Random substitutions, deletions and insertions, each with probability ~p/3 per token."""
    out = []
    if rng.random() < p:
        out.append(rng.choice(pool))
    for t in toks:
        r = rng.random()
        if r < p / 3:
            continue
        if r < 2 * p / 3:
            out.append(rng.choice(pool))
        elif r < p:
            out += [t, rng.choice(pool)]
        else:
            out.append(t)
    return out


def _join(rng: random.Random, toks: list[str], cjk: bool = False) -> str:
    """CJK tokens are joined with nothing or with spaces; everything else with spaces."""
    return ("" if cjk and rng.random() < 0.6 else " ").join(toks)


def make_pairs(seed: int = SEED) -> list[tuple[str, str, str]]:
    """(uid, reference text, hypothesis text); a text starting with whitespace is written
    directly after the id (to test separators), '' gives an id-only line."""
    rng = random.Random(seed)
    pairs = [("U2", "今天天气", "今天天天气"), ("U3", "IT WAS THE FIRST", "it was a first, great")]

    def add(group: str, n: int, make) -> None:
        for k in range(n):
            ref, hyp = make()
            pairs.append((f"{group}{k:03d}", ref, hyp))

    zh = list(ZH)

    def mandarin():
        ref = _zh(rng, 3, 20)
        return _join(rng, ref, True), _join(rng, _edit(rng, ref, zh, 0.3), True)
    add("zh", 30, mandarin)

    def en():
        ref = [_case(rng, rng.choice(EN)) for _ in range(rng.randint(3, 15))]
        hyp = [_case(rng, w) for w in _edit(rng, ref, EN, 0.35)]
        return " ".join(ref), " ".join(hyp)
    add("en", 30, en)

    def num():
        ref = [rng.choice(NUMBERS + EN[:8] + zh[:10]) for _ in range(rng.randint(2, 10))]
        return _join(rng, ref, True), _join(rng, _edit(rng, ref, NUMBERS, 0.4), True)
    add("num", 20, num)

    mix_pool = zh + EN + NUMBERS

    def mix():
        ref = [rng.choice(mix_pool) for _ in range(rng.randint(4, 16))]
        return _join(rng, ref, True), _join(rng, _edit(rng, ref, mix_pool, 0.35), True)
    add("mix", 30, mix)

    def punct():
        def dress(toks):
            out = []
            for t in toks:
                out.append(t)
                if rng.random() < 0.3:
                    out.append(rng.choice(FW_PUNCT))
                if rng.random() < 0.2:
                    out.append(rng.choice(ATTACHED))
            return out
        ref = _zh(rng, 3, 10) + [rng.choice(EN) for _ in range(rng.randint(0, 4))]
        return _join(rng, dress(ref), True), _join(rng, dress(_edit(rng, ref, zh, 0.2)), True)
    add("pun", 25, punct)

    def tags():
        ref = _zh(rng, 2, 8) + [rng.choice(EN)]
        hyp = _edit(rng, ref, zh, 0.2)
        for toks in (ref, hyp):
            for _ in range(rng.randint(1, 3)):
                toks.insert(rng.randint(0, len(toks)), rng.choice(TAGS))
        return _join(rng, ref, True), _join(rng, hyp, True)
    add("tag", 15, tags)

    def spaces():
        seps = [" ", "\t", "\u3000", "  ", " \t\u3000 "]
        ref = _zh(rng, 2, 6) + [rng.choice(EN) for _ in range(2)]
        hyp = _edit(rng, ref, zh, 0.2)
        ref_s, hyp_s = (rng.choice(seps) + "".join(t + rng.choice(seps) for t in toks)
                        for toks in (ref, hyp))
        return ref_s, hyp_s
    add("spc", 13, spaces)
    pairs += [("spc013", " 今天 天气\r", "\t今天 天汽\r"),  # CRLF line endings
              ("spc014", "\u3000ok\u3000go\u3000", "\u3000OK\u3000\u3000GO\t")]

    def ties():
        ref = _zh(rng, 2, 6) if rng.random() < 0.6 else [rng.choice(EN) for _ in range(4)]
        hyp = list(ref)
        kind = rng.randrange(4)
        if kind == 0:  # swap two neighbours
            i = rng.randrange(len(hyp) - 1)
            hyp[i], hyp[i + 1] = hyp[i + 1], hyp[i]
        elif kind == 1:  # repeat a token
            i = rng.randrange(len(hyp))
            hyp[i:i] = [hyp[i]] * rng.randint(1, 2)
        elif kind == 2:  # drop one of a repeated pair
            i = rng.randrange(len(ref))
            ref[i:i] = [ref[i]]
        else:  # reverse
            hyp.reverse()
        cjk = all(len(t) == 1 for t in ref)
        return _join(rng, ref, cjk), _join(rng, hyp, cjk)
    add("tie", 16, ties)
    pairs += [("tie016", "甲乙", "乙甲"), ("tie017", "天天天", "天天"),
              ("tie018", "A B A B", "B A B A"), ("tie019", "甲乙", "丙")]

    def ends():
        ref = _zh(rng, 2, 8)
        head = _zh(rng, 0, 3) + ([rng.choice(EN)] if rng.random() < 0.3 else [])
        tail = _zh(rng, 1, 3)
        if rng.random() < 0.5:
            return _join(rng, ref, True), _join(rng, head + ref + tail, True)
        return _join(rng, head + ref + tail, True), _join(rng, ref, True)  # deletions at both ends
    add("end", 15, ends)

    pairs += [
        ("emp000", "", "今天天气"), ("emp001", "", "hello world 12"), ("emp002", "", ""),
        ("emp003", "今天天气", ""), ("emp004", "IT WAS THE FIRST", ""), ("emp005", " ", "\t"),
        ("emp006", "<unk>", "<noise>"), ("emp007", "，。！", "你好"), ("emp008", "你好", "<unk>"),
        ("emp009", "", "<unk> ， ！"), ("emp010", "hello", " "), ("emp011", "\u3000", "好"),
    ]

    def same():
        ref = [rng.choice(mix_pool) for _ in range(rng.randint(1, 12))]
        text = _join(rng, ref, True)
        return text, text
    add("same", 15, same)

    def wide():
        ref = _zh(rng, 1, 4) + [rng.choice(WIDE) for _ in range(rng.randint(1, 4))]
        return _join(rng, ref, True), _join(rng, _edit(rng, ref, WIDE + zh[:5], 0.4), True)
    add("wid", 15, wide)

    def ja():
        ref = [rng.choice(HIRAGANA) for _ in range(rng.randint(2, 8))] + \
              [rng.choice(JA_WORDS) for _ in range(rng.randint(1, 3))]
        rng.shuffle(ref)
        pool = list(HIRAGANA) + JA_WORDS
        return _join(rng, ref, True), _join(rng, _edit(rng, ref, pool, 0.3), True)
    add("ja", 15, ja)

    def long():
        pool = rng.choice([zh, EN, mix_pool])
        ref = [rng.choice(pool) for _ in range(rng.randint(60, 110))]
        return _join(rng, ref, pool is zh), _join(rng, _edit(rng, ref, pool, 0.15), pool is zh)
    add("long", 12, long)
    return pairs


def _line(uid: str, text: str) -> str:
    if not text or text[0].isspace():
        return f"{uid}{text}\n"
    return f"{uid} {text}\n"


def write_set(out: Path, name: str, pairs: list[tuple[str, str, str]], seed: int,
              drop_hyp: tuple[str, ...] = (), extra_hyp: tuple[tuple[str, str], ...] = ()) -> None:
    ref_lines = [_line(uid, ref) for uid, ref, _ in pairs]
    hyp_lines = [_line(uid, hyp) for uid, _, hyp in pairs if uid not in drop_hyp]
    hyp_lines += [_line(uid, hyp) for uid, hyp in extra_hyp]
    random.Random(seed + 1).shuffle(hyp_lines)  # hypothesis order must not matter
    for lines in (ref_lines, hyp_lines):  # blank lines are skipped by both scorers
        lines.insert(len(lines) // 3, "\n")
        lines.insert(2 * len(lines) // 3, " \t\n")
    (out / f"{name}ref.txt").write_text("".join(ref_lines), encoding="utf-8", newline="")
    (out / f"{name}hyp.txt").write_text("".join(hyp_lines), encoding="utf-8", newline="")


def run_original(python: Path, script: Path, options: tuple[str, ...], ref: Path, hyp: Path) -> str:
    # -I: no user site, no PYTHON* variables, script folder not on sys.path; -X utf8: UTF-8 stdout.
    res = subprocess.run([str(python), "-I", "-X", "utf8", str(script), *options, str(ref), str(hyp)],
                         capture_output=True, check=True)
    if res.stderr:
        raise RuntimeError(f"{script} {options} wrote to stderr:\n{res.stderr.decode()}")
    return res.stdout.decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    found = sorted(SIDE_ENV.glob("lib/python*/site-packages/paddlespeech/dataset/s2t/compute_wer.py"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", type=Path, default=SIDE_ENV / "bin" / "python",
                   help="interpreter that runs the original script")
    p.add_argument("--compute-wer", type=Path, default=found[0] if found else None,
                   help="the original compute_wer.py (default: the side environment's)")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "score")
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    if args.compute_wer is None or not args.compute_wer.is_file():
        p.error("compute_wer.py not found; run tools/setup_paddlespeech_env.sh or pass --compute-wer")
    args.out.mkdir(parents=True, exist_ok=True)

    pairs = make_pairs(args.seed)
    write_set(args.out, "", pairs, args.seed)
    for suffix, options in OPTION_SETS.items():
        text = run_original(args.python, args.compute_wer, options,
                            args.out / "ref.txt", args.out / "hyp.txt")
        (args.out / f"expected_{suffix}.txt").write_text(text, encoding="utf-8", newline="")

    # Small set: M2 has no hypothesis (the original skips it), X9 is not in the reference.
    missing = [("M1", "今天天气", "今天天天气"), ("M2", "没有识别结果", ""),
               ("M3", "hello World", "HELLO word")]
    write_set(args.out, "missing_", missing, args.seed, drop_hyp=("M2",), extra_hyp=(("X9", "多余"),))
    text = run_original(args.python, args.compute_wer, OPTION_SETS["char1_v1"],
                        args.out / "missing_ref.txt", args.out / "missing_hyp.txt")
    (args.out / "expected_missing_char1_v1.txt").write_text(text, encoding="utf-8", newline="")

    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"{len(pairs)} pairs, {len(OPTION_SETS)} option sets, {size / 1024:.0f} KiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
