"""LibriSpeech reader: find (or unpack) the subsets and list utterances per data set.

Layout (LibriSpeech, OpenSLR 12; docs/corpora.md): every archive `<subset>.tar.gz` unpacks to
`LibriSpeech/<subset>/<SPEAKER>/<CHAPTER>/`, holding `<SPEAKER>-<CHAPTER>-<UTT>.flac` and one
`<SPEAKER>-<CHAPTER>.trans.txt` with lines `SPEAKER-CHAPTER-UTT WORD WORD ...` (upper case). The
text is kept as it is, in upper case, as WeNet does (its BPE model, the one in the fixtures, is
upper case); runs of spaces become one.

A data set is a list of subsets (`train_960` = train-clean-100 + train-clean-360 + train-other-500,
`dev` = dev-clean + dev-other); `DEFAULT_SETS` are the standard ones. A folder of `LibriSpeech/` beside
the standard subsets (the English demo's `test-unseen-voices`) is one more subset. FLAC files without a
transcript line, empty transcripts and unreadable or wrongly formatted audio are counted and
reported by id, never silently dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

from paddle_asr.data.corpora.aishell import safe_extract
from paddle_asr.data.corpora.checks import usable_utterance
from paddle_asr.data.manifest import Utterance
from paddle_asr.errors import AsrError

# md5 sums of the OpenSLR 12 archives (as PaddleSpeech's dataset/librispeech/librispeech.py lists them),
# checked by `download`.
SUBSET_MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}
SUBSETS = tuple(SUBSET_MD5)
DEFAULT_SETS: dict[str, list[str]] = {
    "train_960": ["train-clean-100", "train-clean-360", "train-other-500"],
    "dev": ["dev-clean", "dev-other"],
    "dev_clean": ["dev-clean"],
    "dev_other": ["dev-other"],
    "test_clean": ["test-clean"],
    "test_other": ["test-other"],
}
_UTT_ID = re.compile(r"^\d+-\d+-\d+$")


def locate(corpus_dir: Path, log=print) -> Path:
    """The `LibriSpeech` folder under `corpus_dir` (or `corpus_dir` itself), unpacking any
    `<subset>.tar.gz` found in `corpus_dir` whose folder is not there yet."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise AsrError(f"LibriSpeech: {corpus_dir} is not a folder; pass the folder holding LibriSpeech/ "
                       "(or the subset .tar.gz archives) with --data_dir")
    root = corpus_dir if corpus_dir.name == "LibriSpeech" else corpus_dir / "LibriSpeech"
    for subset in SUBSETS:
        archive = corpus_dir / f"{subset}.tar.gz"
        marker = corpus_dir / f"{subset}.tar.gz.extracted"
        if archive.is_file() and not marker.exists():
            log(f"librispeech: unpacking {archive}")
            # Unpacked whole again if a previous run was killed before the marker was written.
            safe_extract(archive, root.parent)
            marker.write_text("ok\n", encoding="utf-8")
    present = [s for s in SUBSETS if (root / s).is_dir()]
    if not present:
        raise AsrError(f"no LibriSpeech subset under {corpus_dir}: expected LibriSpeech/<subset>/ folders "
                       f"({', '.join(SUBSETS)}) or <subset>.tar.gz archives; pass the folder with --data_dir")
    present += sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in SUBSETS)
    log(f"librispeech: {root} has {', '.join(present)}")
    return root


def read_chapter_transcripts(chapter_dir: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Texts of one chapter's `.trans.txt` files, and (file:line, reason) for malformed lines."""
    texts: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for trans in sorted(chapter_dir.glob("*.trans.txt")):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            problems.append((str(trans), f"unreadable transcript file ({e})"))
            continue
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            key, _, words = line.strip().partition(" ")
            if not _UTT_ID.match(key):
                problems.append((f"{trans}:{lineno}", f"'{key}' is not a SPEAKER-CHAPTER-UTT id"))
            elif key in texts:
                problems.append((f"{trans}:{lineno}", f"{key} is listed twice"))
            else:
                texts[key] = " ".join(words.split())
    return texts, problems


def list_subset(root: Path, subset: str, sample_rate: int) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Usable utterances of one subset and (id, reason) for every one left out."""
    folder = root / subset
    if not folder.is_dir():
        raise AsrError(f"LibriSpeech subset {subset} is not in {root}; unpack {subset}.tar.gz there, "
                       "or leave it out of --sets")
    kept: list[Utterance] = []
    dropped: list[tuple[str, str]] = []
    for chapter in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        texts, problems = read_chapter_transcripts(chapter)
        dropped.extend(problems)
        flacs = {f.name.removesuffix(".flac"): f for f in chapter.glob("*.flac")}
        for key in sorted(set(texts) - set(flacs)):
            dropped.append((key, f"transcript line without audio ({chapter}/{key}.flac is missing)"))
        for key in sorted(flacs):
            utt = usable_utterance(key, flacs[key], texts, sample_rate)
            if isinstance(utt, str):
                dropped.append((key, utt))
            else:
                kept.append(utt)
    return kept, dropped


def read_splits(root: Path, sample_rate: int, sets: dict[str, list[str]] | None = None
                ) -> dict[str, tuple[list[Utterance], list[tuple[str, str]]]]:
    """Kept utterances and (id, reason) of dropped ones for each data set (subsets read once)."""
    sets = sets or DEFAULT_SETS
    folders = {p.name for p in Path(root).iterdir() if p.is_dir()}
    unknown = sorted({s for subsets in sets.values() for s in subsets} - set(SUBSETS) - folders)
    if unknown:
        raise AsrError(f"--sets names unknown LibriSpeech subset(s) {', '.join(unknown)}: neither one of "
                       f"{', '.join(SUBSETS)} nor a folder of {root}")
    cache: dict[str, tuple[list[Utterance], list[tuple[str, str]]]] = {}
    out = {}
    for name, subsets in sets.items():
        kept, dropped = [], []
        for subset in subsets:
            if subset not in cache:
                cache[subset] = list_subset(root, subset, sample_rate)
            kept += cache[subset][0]
            dropped += cache[subset][1]
        out[name] = (kept, dropped)
    return out


def fingerprint_inputs(root: Path, sets: dict[str, list[str]] | None = None) -> list:
    """What identifies the unpacked subsets cheaply: per subset, the FLAC count and transcript sizes."""
    parts: list = [str(Path(root).resolve())]
    for subset in sorted({s for subsets in (sets or DEFAULT_SETS).values() for s in subsets}):
        folder = Path(root) / subset
        flacs = sum(1 for _ in folder.glob("*/*/*.flac"))
        trans = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*/*/*.trans.txt"))
        parts.append([subset, flacs, trans])
    return parts


BASE_URL = "https://www.openslr.org/resources/12/"


def fetch_subsets(corpus_dir: Path, subsets: list[str], *, base_url: str = BASE_URL, md5: dict[str, str] | None = None,
                  log=print) -> Path:
    """Stage -1: download the subsets not yet unpacked under `corpus_dir`, then unpack them."""
    from paddle_asr.data.download import download_archive

    md5 = md5 or SUBSET_MD5
    unknown = [s for s in subsets if s not in md5]
    if unknown:
        raise AsrError(f"unknown LibriSpeech subset(s) {', '.join(unknown)}; known: {', '.join(md5)}")
    corpus_dir = Path(corpus_dir)
    for subset in subsets:
        if (corpus_dir / "LibriSpeech" / subset).is_dir():
            log(f"librispeech: {subset} is already unpacked in {corpus_dir / 'LibriSpeech'}")
            continue
        url = base_url.rstrip("/") + f"/{subset}.tar.gz"
        download_archive(url, corpus_dir / f"{subset}.tar.gz", md5[subset], log=log)
    return locate(corpus_dir, log)
