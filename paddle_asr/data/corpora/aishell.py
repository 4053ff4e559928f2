"""AISHELL-1 reader: unpack the per-speaker archives and list utterances per split.

Layout (AISHELL-1, OpenSLR 33; docs/corpora.md): `data_aishell/wav/SPEAKER.tar.gz` unpack inside `wav/` to
`{train,dev,test}/SPEAKER/BAC009SxxxxWyyyy.wav`; `data_aishell/transcript/aishell_transcript_v0.8.txt`
holds `UTTID word word ...`. The split comes only from the path; spaces are removed from the text.
A folder of `wav/` beside the three (the demo corpus's `test_unseen_voices`) is one more split.
Wavs without a transcript, unreadable files and wrong formats are counted and reported by id.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from paddle_asr.data.corpora.checks import usable_utterance
from paddle_asr.data.manifest import Utterance, read_kaldi_table
from paddle_asr.data.text_normalize import normalize_mandarin
from paddle_asr.errors import AsrError

SPLITS = ("train", "dev", "test")
TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"


def find_root(corpus_dir: Path) -> Path:
    """Accept the folder holding `data_aishell` (or its .tgz) or `data_aishell` itself."""
    corpus_dir = Path(corpus_dir)
    for candidate in (corpus_dir, corpus_dir / "data_aishell"):
        if (candidate / "wav").is_dir() and (candidate / TRANSCRIPT).exists():
            return candidate
    tgz = corpus_dir / "data_aishell.tgz"
    if tgz.is_file():
        safe_extract(tgz, corpus_dir)
        return corpus_dir / "data_aishell"
    raise AsrError(
        f"no AISHELL-1 corpus under {corpus_dir}: expected data_aishell/wav/ and "
        f"data_aishell/{TRANSCRIPT} (or data_aishell.tgz); pass the folder with --data_dir"
    )


def _strict_data_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Python's 'data' filter (no `..`, no links out, no devices) that also refuses absolute names,
    which it would quietly make relative: a corpus archive never has them, so one that does is
    not what it claims to be."""
    if member.name.startswith(("/", "\\")) or (len(member.name) > 1 and member.name[1] == ":"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract with Python's 'data' filter, refusing absolute paths, `..` and links that point out."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter=_strict_data_filter)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise AsrError(
            f"cannot extract {archive} ({type(e).__name__}: {e}); the archive is corrupt, truncated "
            "or unsafe - download it again"
        ) from None


def extract_speaker_archives(root: Path, log=print) -> None:
    """Unpack every `wav/*.tar.gz` in place; a marker per archive makes re-runs skip finished ones."""
    archives = sorted((root / "wav").glob("*.tar.gz"))
    done = 0
    for archive in archives:
        marker = archive.with_name(archive.name + ".extracted")
        if marker.exists():
            continue
        # Unpacked again whole if a previous run was killed before writing the marker.
        safe_extract(archive, archive.parent)
        marker.write_text("ok\n", encoding="utf-8")
        done += 1
    log(f"aishell: {len(archives)} speaker archives, {done} unpacked now, {len(archives) - done} already unpacked")


def read_transcripts(path: Path) -> dict[str, str]:
    # AISHELL text is word-segmented, sometimes with runs of spaces: spaces go, and so do
    # punctuation and full-width forms (text_normalize).
    return {key: normalize_mandarin(words) for key, words in read_kaldi_table(path).items()}


def split_names(root: Path) -> list[str]:
    """train, dev, test, then any other folder of `wav/` in name order."""
    extra = sorted(p.name for p in (root / "wav").iterdir() if p.is_dir() and p.name not in SPLITS)
    return [*SPLITS, *extra]


def unused_transcripts(root: Path) -> list[str]:
    """Ids of transcript lines with no audio file in any split (real AISHELL-1 has a few hundred)."""
    audio = {wav.stem for split in split_names(root) for wav in (root / "wav" / split).glob("*/*.wav")}
    return sorted(set(read_kaldi_table(root / TRANSCRIPT)) - audio)


def list_split(
    root: Path, split: str, texts: dict[str, str], sample_rate: int
) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Utterances of one split that can be used, and (id, reason) for every one left out."""
    kept: list[Utterance] = []
    dropped: list[tuple[str, str]] = []
    for wav in sorted((root / "wav" / split).glob("*/*.wav")):
        utt = usable_utterance(wav.stem, wav, texts, sample_rate)
        if isinstance(utt, str):
            dropped.append((wav.stem, utt))
        else:
            kept.append(utt)
    return kept, dropped


def locate(corpus_dir: Path, log=print) -> Path:
    """The unpacked corpus root (`data_aishell`), unpacking what is still packed."""
    root = find_root(corpus_dir)
    extract_speaker_archives(root, log)
    return root


def read_splits(root: Path, sample_rate: int, sets: dict[str, list[str]] | None = None
                ) -> dict[str, tuple[list[Utterance], list[tuple[str, str]]]]:
    """Kept utterances and (id, reason) of dropped ones, per split, of an unpacked corpus."""
    if sets:
        raise AsrError(f"AISHELL-1 has fixed splits ({', '.join(SPLITS)}); --sets {sets} applies to LibriSpeech only")
    texts = read_transcripts(root / TRANSCRIPT)
    return {split: list_split(root, split, texts, sample_rate) for split in split_names(root)}


def fingerprint_inputs(root: Path, sets: dict[str, list[str]] | None = None) -> list:
    """What identifies the unpacked corpus cheaply: archives, wav count and the transcript file."""
    archives = [(p.name, p.stat().st_size) for p in sorted((root / "wav").glob("*.tar.gz"))]
    wav_count = sum(1 for _ in (root / "wav").glob("*/*/*.wav"))
    transcript = root / TRANSCRIPT
    return [str(root.resolve()), archives, wav_count, transcript.stat().st_size, transcript.stat().st_mtime_ns]
