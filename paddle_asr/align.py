"""Align given transcripts to their audio (`paddle-asr align`): the CTC Viterbi path of the *given*
text, not of a hypothesis, with each token's and word's start and end.

A recording is encoded whole when it is at most `window` seconds long, else in windows of that
length overlapping by `overlap` seconds, each encoder frame taken from the window in which it lies
farther from an edge. The text's units are then forced through the CTC posteriors
(`decode.alignment`): a token starts where its CTC spike starts. CTC marks a token's onset only, so
a token ends where the next one starts, or, before a pause, where WebRTC's voice-activity detector
(`data.vad`) hears the speech under it stop; never before its spike ends. A word runs from its first
token's start to its last token's end.

Words: for sentencepiece units, pieces joined at `▁`; for characters, the text's whitespace-separated
words (normalised as AISHELL's preparation does, `data.text_normalize`), or every character when
the text has no spaces. An utterance that cannot be aligned (units outside the vocabulary, more
tokens than frames, no audio or no text for its id, ...) is reported with its id and the reason;
the others are still written.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from paddle_asr.data.audio_inputs import AudioInput
from paddle_asr.data.tokenizer import SPACE, WORD_START, BpeTokenizer, CharTokenizer
from paddle_asr.data.vad import FRAME_MS, VadConfig, speech_frames, speech_runs
from paddle_asr.errors import AsrError

FORMATS = ("ctm", "textgrid", "json")
# The Viterbi search keeps one byte per (frame, state): frames x (2 tokens + 1) of at most this many
# (400 MB) cells, about 30 minutes of Mandarin at 4 characters a second and 80 ms frames.
MAX_ALIGN_CELLS = 400_000_000


@dataclass(frozen=True)
class AlignOptions:
    window: float = 60.0     # seconds encoded in one pass; longer recordings go in overlapping windows
    overlap: float = 10.0    # seconds consecutive windows share
    num_threads: int = 2
    runtime: str = "auto"    # as transcribe: paddle, onnx or auto (export.runtime.load_backend)
    # Pauses: where speech under a token stops before the next token starts (see token_intervals).
    vad: VadConfig = VadConfig(aggressiveness=3, min_silence=0.2)


@dataclass
class Alignment:
    """One utterance aligned to its recording; times in seconds from the recording's start."""
    key: str
    path: Path
    duration: float
    frame_seconds: float
    text: str = ""                                     # the aligned words, space-separated
    words: list[dict] = field(default_factory=list)   # {"word", "start", "end", "conf"}
    tokens: list[dict] = field(default_factory=list)  # {"token", "start", "end", "conf"}

    def to_json(self) -> dict:
        return {"key": self.key, "path": str(self.path), "duration": round(self.duration, 3),
                "frame_seconds": self.frame_seconds, "text": self.text, "words": self.words, "tokens": self.tokens}


# ------------------------------------------------------------------------------------- the text
def transcript_words(tokenizer: CharTokenizer, text: str) -> list[tuple[str, list[str]]]:
    """(word, the units it is written in) for each word of `text` (see the module docstring)."""
    if isinstance(tokenizer, BpeTokenizer):
        words: list[tuple[str, list[str]]] = []
        for piece in tokenizer.pieces(" ".join(text.split())):
            if piece.startswith(WORD_START) or not words:
                words.append(("", []))
            words[-1] = (words[-1][0] + piece.replace(WORD_START, ""), words[-1][1] + [piece])
        return words
    if SPACE in tokenizer.index:  # a character model that spells word breaks: `<space>` opens each later word
        return [(w, ([SPACE] if i else []) + list(w)) for i, w in enumerate(text.split())]
    from paddle_asr.data.text_normalize import normalize_mandarin

    raw = text.split()
    if len(raw) == 1:
        raw = list(raw[0])
    normalized = (normalize_mandarin(w) for w in raw)
    return [(w, list(w)) for w in normalized if w]  # a word of punctuation alone has nothing to align


def transcript_ids(tokenizer: CharTokenizer, words: list[tuple[str, list[str]]]) -> list[int]:
    """The unit ids of `words`; AsrError naming every unit outside the model's vocabulary."""
    missing = sorted({u for _, units in words for u in units if u not in tokenizer.index})
    if missing:
        raise AsrError(f"the text has units outside the model's vocabulary: {_listed(map(repr, missing))}; "
                       "correct the text, or use a model whose units include them")
    return [tokenizer.index[u] for _, units in words for u in units]


def _listed(items, most: int = 10) -> str:
    """The first `most` items, comma-separated, and how many more there are."""
    items = list(items)
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def frames_needed(ids: list[int]) -> int:
    """The fewest CTC frames that spell `ids`: one per token and a blank between two equal tokens."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


# -------------------------------------------------------------------------------------- the audio
def encoder_windows(num_feats: int, window: int, overlap: int, subsampling: int) -> list[tuple[int, int]]:
    """[start, end) fbank frames of the windows that cover `num_feats` frames: `window` frames each
    (the last one up to `subsampling` frames more), consecutive ones sharing about `overlap`, every
    start a multiple of `subsampling` so that window encoder frames are recording encoder frames."""
    if num_feats <= window:
        return [(0, num_feats)]
    hop = (window - overlap) // subsampling * subsampling
    last = (num_feats - window) // subsampling * subsampling
    starts = list(range(0, last, hop)) + [last]
    return [(a, a + window) for a in starts[:-1]] + [(last, num_feats)]


def stitch_windows(pieces: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """One [T, V] array from (first encoder frame, [t, V]) of overlapping windows in order: each
    shared stretch is cut in its middle, so every frame comes from the window where it is farther
    from an edge."""
    out = []
    cut = 0
    for k, (offset, lp) in enumerate(pieces):
        stop = offset + len(lp)
        if k + 1 < len(pieces):
            stop = (pieces[k + 1][0] + stop) // 2
        out.append(lp[cut - offset: stop - offset])
        cut = stop
    return np.concatenate(out)


# ------------------------------------------------------------------------------------- the times
def token_intervals(spans: list[tuple[int, int]], speech: list[tuple[float, float]], frame_seconds: float,
                    duration: float) -> list[tuple[float, float]]:
    """(start, end) seconds of each token from its spike's [first, last + 1) encoder frames and the
    speech runs (start, end seconds, in order): a token starts with its spike and ends where the
    next token starts, or earlier where the last speech run under its spike ends; never before its
    spike ends. A spike under no speech run ends with itself."""
    starts = [min(a * frame_seconds, duration) for a, _ in spans]
    out = []
    for u, (_, last) in enumerate(spans):
        spike_end = min(last * frame_seconds, duration)
        following = starts[u + 1] if u + 1 < len(spans) else duration
        under = [end for start, end in speech if start < spike_end and end > starts[u]]
        end = max(spike_end, min(following, under[-1])) if under else spike_end
        out.append((starts[u], end))
    return out


def _confidence(log_probs: np.ndarray, token: int, span: tuple[int, int]) -> float:
    """The token's highest CTC posterior over its spike."""
    return float(np.exp(log_probs[span[0]: span[1], token].max()))


def timed_alignment(words: list[tuple[str, list[str]]], confs: list[float], times: list[tuple[float, float]]
                    ) -> tuple[list[dict], list[dict]]:
    """(words, tokens) with start/end seconds (3 decimals) and confidences (2 decimals; a word's is
    its least confident token's)."""
    tokens, timed_words = [], []
    u = 0
    for word, units in words:
        first = u
        for unit in units:
            tokens.append({"token": unit, "start": round(times[u][0], 3), "end": round(times[u][1], 3),
                           "conf": round(confs[u], 2)})
            u += 1
        timed_words.append({"word": word, "start": tokens[first]["start"], "end": tokens[u - 1]["end"],
                            "conf": round(min(confs[first:u]), 2)})
    return timed_words, tokens


class Aligner:
    """An exported bundle (FP32 or INT8, Paddle Inference or ONNX Runtime) that aligns texts to recordings."""

    def __init__(self, model_dir: Path, options: AlignOptions = AlignOptions(), backend=None) -> None:
        """`backend`: the bundle's runtime when the caller has loaded it already (the Python API's
        recognizer), so that the programs are not loaded twice."""
        from paddle_asr.export.bundle import read_bundle
        from paddle_asr.export.runtime import load_backend

        options.vad.check()
        self.options = options
        self.meta, self.features, self.tokenizer = read_bundle(Path(model_dir))
        self.backend = backend or load_backend(Path(model_dir), self.meta, num_threads=options.num_threads,
                                               runtime=options.runtime)
        self.rate = self.features.sample_rate
        shift = self.features.frame_shift_ms / 1000
        self.frame_seconds = self.backend.subsampling_rate * shift
        self.window, self.overlap = round(options.window / shift), round(options.overlap / shift)
        self._check_window(shift)

    def _check_window(self, shift: float) -> None:
        longest = int(self.meta.get("max_encoder_frames") or 0)
        subsampling = self.backend.subsampling_rate
        if longest and (self.window + subsampling) // subsampling > longest:  # the last window is up to one longer
            raise AsrError(f"--window {self.options.window:g} s is more than the model's positional encoding takes "
                           f"({longest} encoder frames, {longest * self.frame_seconds:g} s); give a shorter window")
        if not 1.0 <= self.options.overlap <= self.options.window / 2:
            raise AsrError(f"--overlap {self.options.overlap:g} s: give at least 1 s and at most half the window "
                           f"({self.options.window / 2:g} s)")
        if self.window < max(int(self.meta.get("min_input_frames", 1)), round(2.0 / shift)):
            raise AsrError(f"--window {self.options.window:g} s is too short; give at least 2 s")

    def log_probs(self, waveform: np.ndarray, columns: list[int]) -> np.ndarray:
        """CTC log-probs [T, len(columns)] of the recording, only the units in `columns` kept."""
        from paddle_asr.features import compute_fbank

        feats = compute_fbank(waveform, self.features)
        if len(feats) < int(self.meta.get("min_input_frames", 1)):
            raise AsrError(f"the audio is too short to align ({len(waveform) / self.rate:.3f} s)")
        pieces = []
        for start, end in encoder_windows(len(feats), self.window, self.overlap, self.backend.subsampling_rate):
            _, lengths, lp = self.backend.encode(feats[None, start:end], np.array([end - start], np.int64))
            pieces.append((start // self.backend.subsampling_rate, lp[0, : lengths[0]][:, columns]))
        return stitch_windows(pieces)

    def align(self, key: str, path: Path, waveform: np.ndarray, text: str) -> Alignment:
        """`text` aligned to `waveform` (mono, int16 range, the model's rate); AsrError with the reason
        when it cannot be."""
        from paddle_asr.decode.alignment import token_frame_spans

        words = transcript_words(self.tokenizer, text)
        if not words:
            raise AsrError("the transcript is empty (nothing to align)")
        ids = transcript_ids(self.tokenizer, words)
        columns = sorted({self.tokenizer.blank_id, *ids})
        column = {unit: k for k, unit in enumerate(columns)}
        log_probs = self.log_probs(waveform, columns)
        duration = len(waveform) / self.rate
        self._check_size(ids, len(log_probs), duration)
        local = [column[i] for i in ids]
        spans = token_frame_spans(log_probs, local, column[self.tokenizer.blank_id])
        if spans is None:  # enough frames (_check_size), yet every path has a zero-probability step
            raise AsrError("no CTC path of the model spells the text (it gives some unit zero probability)")
        runs = speech_runs(speech_frames(waveform, self.rate, self.options.vad.aggressiveness), self.options.vad)
        speech = [(a * FRAME_MS / 1000, b * FRAME_MS / 1000) for a, b in runs]
        times = token_intervals(spans, speech, self.frame_seconds, duration)
        confs = [_confidence(log_probs, t, s) for t, s in zip(local, spans)]
        timed_words, tokens = timed_alignment(words, confs, times)
        return Alignment(key, path, duration, self.frame_seconds, " ".join(w for w, _ in words), timed_words, tokens)

    def _check_size(self, ids: list[int], num_frames: int, duration: float) -> None:
        needed = frames_needed(ids)
        if needed > num_frames:
            raise AsrError(f"{len(ids)} tokens need at least {needed} encoder frames (a blank between repeated "
                           f"tokens), the {duration:.2f} s of audio have {num_frames} ({self.frame_seconds * 1000:g} "
                           "ms each): the text is too long for the audio, or belongs to another recording")
        if num_frames * (2 * len(ids) + 1) > MAX_ALIGN_CELLS:
            raise AsrError(f"{duration:.0f} s of audio with {len(ids)} tokens is too long to align at once "
                           f"({num_frames} frames x {2 * len(ids) + 1} states > {MAX_ALIGN_CELLS:,}); cut the "
                           "recording and its text into shorter utterances")


# ------------------------------------------------------------------------------------- the files
def ctm_lines(result: Alignment, level: str = "word") -> list[str]:
    """NIST CTM, as Kaldi writes it: `<key> 1 <start> <duration> <word> <confidence>`, seconds to 2 decimals."""
    items = result.words if level == "word" else result.tokens
    lines = []
    for item in items:
        start, end = round(item["start"], 2), round(item["end"], 2)
        lines.append(f"{result.key} 1 {start:.2f} {max(end - start, 0.0):.2f} {item[level]} {item['conf']:.2f}")
    return lines


def _praat_string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _tier(name: str, items: list[dict], label: str, duration: float) -> list[str]:
    """A Praat IntervalTier from `items` ({label, start, end} in order), the gaps as empty intervals."""
    intervals: list[tuple[float, float, str]] = []
    at = 0.0
    for item in items:
        if item["start"] > at:
            intervals.append((at, item["start"], ""))
        intervals.append((item["start"], item["end"], item[label]))
        at = item["end"]
    if duration > at:
        intervals.append((at, duration, ""))
    lines = ['        class = "IntervalTier"', f"        name = {_praat_string(name)}", "        xmin = 0",
             f"        xmax = {duration}", f"        intervals: size = {len(intervals)}"]
    for k, (start, end, text) in enumerate(intervals, 1):
        lines += [f"        intervals [{k}]:", f"            xmin = {start}", f"            xmax = {end}",
                  f"            text = {_praat_string(text)}"]
    return lines


def textgrid_text(result: Alignment) -> str:
    """Praat's TextGrid text format with two interval tiers, `words` and `tokens`, over the recording."""
    duration = round(result.duration, 3)
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration}",
             "tiers? <exists>", "size = 2", "item []:"]
    for k, (name, items, label) in enumerate([("words", result.words, "word"), ("tokens", result.tokens, "token")], 1):
        lines += [f"    item [{k}]:", *_tier(name, items, label, duration)]
    return "\n".join(lines) + "\n"


def read_transcript_table(path: Path) -> dict[str, str]:
    """The `--text` file: Kaldi `<id> <transcript>` lines."""
    from paddle_asr.data.manifest import read_kaldi_table

    if not Path(path).is_file():
        raise AsrError(f"--text {path}: no such file; give a Kaldi text file of '<id> <transcript>' lines")
    return read_kaldi_table(Path(path))


def alignments(aligner: Aligner, inputs: list[AudioInput], texts: dict[str, str]
               ) -> Iterator[Alignment | tuple[str, str]]:
    """For each input in order, its Alignment or (key, reason) when it cannot be aligned."""
    from paddle_asr.data.audio import read_audio_resampled

    for item in inputs:
        if item.key not in texts:
            yield item.key, f"{item.path} has no transcript line with id '{item.key}' in the --text file"
            continue
        try:
            waveform = read_audio_resampled(item.path, aligner.rate)
            yield aligner.align(item.key, item.path, waveform, texts[item.key])
        except AsrError as e:
            yield item.key, str(e)


@contextlib.contextmanager
def _opened(out: Path | None, output_format: str) -> Iterator[tuple[TextIO | None, Path | None]]:
    """Where results go: (stream, None) for CTM and JSON, (None, folder) for TextGrid files. A file
    is written under a temporary name and takes its own only when complete."""
    from paddle_asr.artifacts import atomic_output_file

    if output_format == "textgrid":
        yield None, Path(out)
    elif out is None:
        yield sys.stdout, None
    else:
        with atomic_output_file(Path(out)) as tmp, tmp.open("w", encoding="utf-8") as stream:
            yield stream, None


def _write(result: Alignment, output_format: str, level: str, stream: TextIO | None, folder: Path | None) -> None:
    from paddle_asr.artifacts import atomic_write_text

    if folder is not None:
        atomic_write_text(folder / f"{result.key}.TextGrid", textgrid_text(result))
        return
    text = (json.dumps(result.to_json(), ensure_ascii=False) if output_format == "json"
            else "\n".join(ctm_lines(result, level)))
    if text:
        print(text, file=stream, flush=True)


def align_paths(bundle: Path, text: Path, paths: list[str], options: AlignOptions = AlignOptions(), *,
                output_format: str = "ctm", level: str = "word", out: Path | None = None,
                err: TextIO = sys.stderr) -> int:
    """`paddle-asr align`: the transcripts of `text` aligned to the audio of `paths` (files, folders,
    wav.scp lists) with `bundle`, written as CTM or JSON lines to `out` (a file, in place when
    complete; None: stdout), or as `<key>.TextGrid` files in the folder `out`. Every utterance
    that cannot be aligned is named on `err` with the reason and left out; returns 1 when there was
    any, else 0."""
    from paddle_asr.data.audio_inputs import collect_inputs

    if output_format not in FORMATS:
        raise AsrError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if level not in ("word", "token"):
        raise AsrError(f"--level must be word or token, got {level!r}")
    if output_format == "textgrid" and out is None:
        raise AsrError("--format textgrid writes one <key>.TextGrid per recording: give their folder with --out")
    texts = read_transcript_table(text)
    inputs, problems = collect_inputs(paths)
    keys = {item.key for item in inputs}
    problems += [(key, f"has a transcript in {text} but no audio among the inputs") for key in texts if key not in keys]
    for where, reason in problems:
        print(f"error: {where}: {reason}", file=err, flush=True)
    aligner = Aligner(Path(bundle), options)
    done = 0
    with _opened(out, output_format) as (stream, folder):
        for result in alignments(aligner, inputs, texts):
            if isinstance(result, Alignment):
                _write(result, output_format, level, stream, folder)
                done += 1
            else:
                problems.append(result)
                print(f"error: {result[0]}: {result[1]}", file=err, flush=True)
    print(f"aligned {done} of {len(inputs)} recordings", file=err, flush=True)
    if problems:
        print(f"error: {len(problems)} utterance(s) could not be aligned: {_listed(w for w, _ in problems)}",
              file=err, flush=True)
        return 1
    return 0
