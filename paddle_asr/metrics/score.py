"""Corpus scorer that reproduces WeNet / PaddleSpeech ``compute-wer.py`` output.

The report text matches ``compute-wer.py --char=1 --v=1 REF HYP`` byte for byte
(tokenisation, normalisation, alignment tie-breaks, aligned ``lab:``/``rec:``
lines, summary and per-cluster lines); docs/scoring.md lists the rules.  The same holds
for ``--char=0`` and ``--v=0/2``: tests/test_score_golden.py compares against the
original's output on generated pairs (tools/make_score_golden.py).

One deliberate difference: a reference utterance without a hypothesis line is
scored as if its hypothesis were empty (all deletions) and reported, instead of
being silently skipped.  ``missing_as_deletions=False`` (CLI:
``--keep-missing-skip``) restores the original skip.  Note lines are appended
after the summary only when utterances are missing or extra, so the text of a
well-formed run is identical to the original script's.

Usage::

    python -m paddle_asr.metrics.score --char=1 --v=1 --ref text --hyp hyp.txt
    python -m paddle_asr.metrics.score --char=1 --v=1 text hyp.txt
"""
from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ErrorCounts", "ScoreError", "ScoreReport", "main", "read_transcripts",
           "score", "score_files", "tokenize"]

# Characters the original treats as whitespace inside a token scan.
_SPACES = frozenset(" \t\r\n")
# Dropped whenever the scanner is at a token boundary.
_PUNCTS = frozenset("!,?、。！，；？：「」︰『』《》")
_TAG_RE = re.compile(r"<[^>]*>?")  # '<' up to and including '>' (or end of token)
_RULE = "=" * 75
# Characters whose Unicode name starts with one of these are ignored by clustering.
_CLUSTER_IGNORED = ("AMPERSAND", "APOSTROPHE", "COMMERCIAL AT", "DEGREE CELSIUS",
                    "EQUALS SIGN", "FULL STOP", "HYPHEN-MINUS", "LOW LINE",
                    "NUMBER SIGN", "PLUS SIGN", "SEMICOLON")
_MAX_LISTED_IDS = 20

# Alignment operations.
_NON, _COR, _SUB, _DEL, _INS = range(5)


class ScoreError(ValueError):
    """Malformed transcript file or scoring input."""


@dataclass
class ErrorCounts:
    n: int = 0  # reference tokens (= c + s + d)
    c: int = 0
    s: int = 0
    d: int = 0
    i: int = 0

    @property
    def errors(self) -> int:
        return self.s + self.d + self.i

    @property
    def rate(self) -> float:
        """Error rate in percent; 0.0 when there are no reference tokens."""
        return self.errors * 100.0 / self.n if self.n else 0.0

    def add(self, other: ErrorCounts) -> ErrorCounts:
        """Add ``other`` in place and return self."""
        self.n += other.n
        self.c += other.c
        self.s += other.s
        self.d += other.d
        self.i += other.i
        return self

    def summary(self) -> str:
        """``'x.xx % N=.. C=.. S=.. D=.. I=..'`` as printed by compute-wer.py."""
        return (f"{self.rate:4.2f} % N={self.n} C={self.c} S={self.s} "
                f"D={self.d} I={self.i}")


@dataclass
class ScoreReport:
    overall: ErrorCounts
    per_utt: dict[str, ErrorCounts]   # scored utterances, reference-file order
    clusters: dict[str, ErrorCounts]  # order of first appearance, as the original
    missing_hyp: list[str] = field(default_factory=list)  # ref ids without a hyp line
    extra_hyp: list[str] = field(default_factory=list)    # hyp ids not in the reference
    text: str = ""                    # the full compute-wer style report

    @property
    def metric(self) -> str:
        """compute-wer scores Chinese by character and English by word: WER when English words
        outnumber Mandarin characters in the scored tokens, else CER."""
        english, mandarin = (self.clusters[c].n if c in self.clusters else 0 for c in ("English", "Mandarin"))
        return "WER" if english > mandarin else "CER"


# ---------------------------------------------------------------- tokenisation
def _characterize(text: str) -> list[str]:
    """``--char=1`` tokenisation: one token per ``Lo`` char, ASCII runs kept whole."""
    tokens: list[str] = []
    i, end = 0, len(text)
    while i < end:
        ch = text[i]
        cat = unicodedata.category(ch)
        if ch in _PUNCTS or ch in _SPACES or cat in ("Zs", "Cn"):
            i += 1
        elif cat == "Lo":
            tokens.append(ch)
            i += 1
        else:
            stop = ">" if ch == "<" else " "
            j = i + 1
            while j < end and ord(text[j]) < 128 and text[j] not in _SPACES and text[j] != stop:
                j += 1
            if j < end and text[j] == ">":
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def tokenize(text: str, *, char: bool = True, case_sensitive: bool = False,
             remove_tags: bool = True) -> list[str]:
    """Tokenise and normalise one transcript (without its utterance id)."""
    raw = _characterize(text) if char else text.split()
    out = []
    for tok in raw:
        if not case_sensitive:
            tok = tok.upper()
        if remove_tags:
            tok = _TAG_RE.sub("", tok)
        if tok:
            out.append(tok)
    return out


# ------------------------------------------------------------------ alignment
def _align(lab: list[str], rec: list[str]) -> list[tuple[int, str, str]]:
    """Levenshtein alignment with compute-wer.py's tie-break (del, ins, then diagonal).

    Returns (op, lab_token, rec_token) triples; the missing side of a deletion or
    insertion is ''.
    """
    rows, cols = len(lab) + 1, len(rec) + 1
    dist = [[0] * cols for _ in range(rows)]
    op = [[_NON] * cols for _ in range(rows)]
    for r in range(1, rows):
        dist[r][0], op[r][0] = r, _DEL
    for k in range(1, cols):
        dist[0][k], op[0][k] = k, _INS
    for r in range(1, rows):
        for k in range(1, cols):
            best, best_op = dist[r - 1][k] + 1, _DEL
            if dist[r][k - 1] + 1 < best:
                best, best_op = dist[r][k - 1] + 1, _INS
            same = lab[r - 1] == rec[k - 1]
            diag = dist[r - 1][k - 1] + (0 if same else 1)
            if diag < best:
                best, best_op = diag, (_COR if same else _SUB)
            dist[r][k], op[r][k] = best, best_op
    path: list[tuple[int, str, str]] = []
    r, k = len(lab), len(rec)
    while op[r][k] != _NON:
        o = op[r][k]
        if o in (_COR, _SUB):
            path.append((o, lab[r - 1], rec[k - 1]))
            r, k = r - 1, k - 1
        elif o == _DEL:
            path.append((o, lab[r - 1], ""))
            r -= 1
        else:
            path.append((o, "", rec[k - 1]))
            k -= 1
    path.reverse()
    return path


# ----------------------------------------------------------------- formatting
def _width(token: str) -> int:
    """Display width: East-Asian Ambiguous/Fullwidth/Wide characters count 2."""
    return sum(2 if unicodedata.east_asian_width(c) in ("A", "F", "W") else 1 for c in token)


def _cluster_of(word: str) -> str:
    """compute-wer.py's default cluster: Mandarin/English/Number/Japanese/Other."""
    kinds = []
    for ch in word:
        name = unicodedata.name(ch, "")
        if name.startswith("DIGIT"):
            kinds.append("Number")
        elif name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
            kinds.append("Mandarin")
        elif name.startswith(("LATIN CAPITAL LETTER", "LATIN SMALL LETTER")):
            kinds.append("English")
        elif name.startswith("HIRAGANA LETTER"):
            kinds.append("Japanese")
        elif not name.startswith(_CLUSTER_IGNORED):
            return "Other"
    return kinds[0] if kinds and len(set(kinds)) == 1 else "Other"


def _aligned_lines(path: list[tuple[int, str, str]]) -> tuple[str, str]:
    lab_parts, rec_parts = [], []
    for _, lt, rt in path:
        w = max(_width(lt), _width(rt))
        lab_parts.append(lt + " " * (w - _width(lt)) + " ")
        rec_parts.append(rt + " " * (w - _width(rt)) + " ")
    return "".join(lab_parts), "".join(rec_parts)


def _utt_block(uid: str, counts: ErrorCounts, path: list[tuple[int, str, str]],
               verbose: int) -> str:
    text = f"\nutt: {uid}\nWER: {counts.summary()}\n"
    if path:  # the original prints no lab/rec lines when both sides are empty
        lab, rec = _aligned_lines(path)
        # --v=2: the original formats the id as UTF-8 *bytes* ('%s' % fid.encode()), a
        # Python 2 leftover that prints "lab(b'U1'):"; kept so the text stays identical.
        tag = repr(uid.encode("utf-8"))
        lab_tag, rec_tag = (f"lab({tag}):", f"rec({tag}):") if verbose > 1 else ("lab:", "rec:")
        text += f"{lab_tag} {lab}\n{rec_tag} {rec}\n\n"
    return text


def _id_list(ids: list[str]) -> str:
    shown = " ".join(ids[:_MAX_LISTED_IDS])
    more = len(ids) - _MAX_LISTED_IDS
    return shown + (f" ... (+{more} more)" if more > 0 else "")


def _notes(missing: list[str], extra: list[str], missing_as_deletions: bool) -> str:
    lines = []
    if missing:
        how = ("counted as all deletions" if missing_as_deletions
               else "skipped (not scored)")
        lines.append(f"NOTE: {len(missing)} reference utterance(s) have no hypothesis "
                     f"line and were {how}: {_id_list(missing)}")
    if extra:
        lines.append(f"NOTE: {len(extra)} hypothesis utterance(s) not in the reference "
                     f"were ignored: {_id_list(extra)}")
    return "".join(line + "\n" for line in lines)


# -------------------------------------------------------------------- scoring
def score(refs: dict[str, str], hyps: dict[str, str], *, char: bool = True,
          verbose: int = 1, case_sensitive: bool = False, remove_tags: bool = True,
          missing_as_deletions: bool = True) -> ScoreReport:
    """Score ``hyps`` against ``refs`` (id -> transcript), in reference order."""
    norm = dict(char=char, case_sensitive=case_sensitive, remove_tags=remove_tags)
    overall = ErrorCounts()
    per_utt: dict[str, ErrorCounts] = {}
    clusters: dict[str, ErrorCounts] = {}
    cluster_cache: dict[str, str] = {}
    missing = [uid for uid in refs if uid not in hyps]
    extra = [uid for uid in hyps if uid not in refs]
    blocks = []
    for uid, ref_text in refs.items():
        if uid not in hyps and not missing_as_deletions:
            continue
        lab = tokenize(ref_text, **norm)
        rec = tokenize(hyps.get(uid, ""), **norm)
        for word in rec + lab:  # cluster order = first appearance, hyp words first
            if word not in cluster_cache:
                cluster_cache[word] = _cluster_of(word)
                clusters.setdefault(cluster_cache[word], ErrorCounts())
        path = _align(lab, rec)
        counts = ErrorCounts()
        for o, lt, rt in path:
            cl = clusters[cluster_cache[lt or rt]]
            if o == _INS:
                counts.i += 1
                cl.i += 1
                continue
            delta = ErrorCounts(n=1, c=int(o == _COR), s=int(o == _SUB), d=int(o == _DEL))
            counts.add(delta)
            cl.add(delta)
        per_utt[uid] = counts
        overall.add(counts)
        if verbose:
            blocks.append(_utt_block(uid, counts, path, verbose))
    if verbose:
        cluster_lines = "".join(f"{name} -> {c.summary()}\n" for name, c in clusters.items())
        summary = f"{_RULE}\n\nOverall -> {overall.summary()}\n{cluster_lines}\n{_RULE}\n"
    else:
        summary = f"Overall -> {overall.summary()}\n\n"
    text = "".join(blocks) + summary + _notes(missing, extra, missing_as_deletions)
    return ScoreReport(overall, per_utt, clusters, missing, extra, text)


def read_transcripts(path: Path) -> dict[str, str]:
    """Read ``UTTID text`` lines (UTF-8; an initial BOM is ignored).

    Blank lines are skipped; a line holding only the id maps to ''.  A duplicate
    id or undecodable bytes raise :class:`ScoreError` naming the file and line.
    """
    path = Path(path)
    out: dict[str, str] = {}
    if not path.is_file():
        raise ScoreError(f"{path}: no such file; give an 'UTTID text' file (a set's data/<set>/text, or a result's)")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ScoreError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            parts = line.split(maxsplit=1)
            if not parts:
                continue
            uid = parts[0]
            if uid in out:
                raise ScoreError(f"{path}:{lineno}: duplicate utterance id {uid!r}")
            out[uid] = parts[1].strip() if len(parts) > 1 else ""
    return out


def score_files(ref: Path, hyp: Path, **kw) -> ScoreReport:
    """Read two ``UTTID text`` files and :func:`score` them."""
    return score(read_transcripts(ref), read_transcripts(hyp), **kw)


# ------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paddle_asr.metrics.score",
        description="compute-wer.py compatible WER/CER scorer.")
    p.add_argument("--ref", type=Path, help="reference 'UTTID text' file")
    p.add_argument("--hyp", type=Path, help="hypothesis 'UTTID text' file")
    p.add_argument("files", nargs="*", type=Path, metavar="REF HYP",
                   help="positional alternative to --ref/--hyp")
    p.add_argument("--char", type=int, choices=(0, 1), default=1,
                   help="1: character tokenisation for CJK (default), 0: whitespace split")
    p.add_argument("--v", type=int, choices=(0, 1, 2), default=1, help="verbosity")
    p.add_argument("--cs", type=int, choices=(0, 1), nargs="?", const=1, default=0,
                   help="case-sensitive comparison")
    p.add_argument("--rt", type=int, choices=(0, 1), default=1,
                   help="strip <...> tags from tokens (default 1); unlike the original, "
                        "where --rt=0 has no effect (it sets a local, not the global)")
    p.add_argument("--keep-missing-skip", action="store_true",
                   help="skip reference utterances without a hypothesis (original "
                        "behaviour) instead of counting them as deletions")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.files and (args.ref or args.hyp) or len(args.files) not in (0, 2):
        parser.error("give REF and HYP either positionally or with --ref/--hyp")
    ref, hyp = args.files if args.files else (args.ref, args.hyp)
    if ref is None or hyp is None:
        parser.error("both a reference and a hypothesis file are required")
    try:
        report = score_files(ref, hyp, char=bool(args.char), verbose=args.v,
                             case_sensitive=bool(args.cs), remove_tags=bool(args.rt),
                             missing_as_deletions=not args.keep_missing_skip)
    except (OSError, ScoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(report.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
