"""Transcribe audio with an exported model bundle (FP32 or INT8): files, folders and `wav.scp` lists.

Any readable WAV/FLAC/OGG/MP3 is downmixed to mono and resampled to the model's rate. A recording
longer than `segment_over` seconds is cut into speech segments by WebRTC's voice-activity detector
(`data.vad`), and segments (of one recording or of many short files) are decoded in batches. Text
output is Kaldi's `key text`; JSON output is one object per recording with per-segment and
per-token start/end times, the token times from the CTC alignment of the chosen hypothesis.

An input that cannot be read is reported with its name and the reason, the others are still
transcribed, and the caller gets the failures back to set a non-zero exit status.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paddle_asr.config import DecodeConfig, check_config
from paddle_asr.data.audio import read_audio_resampled
from paddle_asr.data.audio_inputs import AudioInput
from paddle_asr.data.tokenizer import WORD_START, BpeTokenizer, CharTokenizer
from paddle_asr.data.vad import Segment, VadConfig, split_on_silence
from paddle_asr.decode.alignment import token_frame_spans
from paddle_asr.decode.context_graph import context_graph_for
from paddle_asr.decode.recognizer import Recognizer
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import read_bundle
from paddle_asr.features import compute_fbank

DEFAULT_METHOD = "auto"  # attention rescoring when the model has an attention decoder, else CTC prefix beam search


@dataclass(frozen=True)
class TranscribeOptions:
    method: str = DEFAULT_METHOD
    chunk_size: int = -1          # > 0: the encoder runs chunk by chunk, as a streaming server
    num_left_chunks: int = -1     # chunks of history the streaming attention cache keeps (-1: all)
    beam_size: int = 10
    batch_size: int = 8           # segments decoded together
    segment_over: float = 30.0    # seconds; longer recordings are cut by the VAD (0: every recording)
    vad: VadConfig = VadConfig()
    num_threads: int = 2
    runtime: str = "auto"         # paddle (Paddle Inference), onnx (ONNX Runtime), auto (export.runtime.load_backend)
    context_list: str = ""        # hotwords: phrases, one a line, the prefix beam search favours (docs/decoding.md)
    context_score: float = DecodeConfig.context_score  # their bonus per matched unit


@dataclass
class SegmentResult:
    start: float  # seconds from the start of the recording
    end: float
    text: str = ""
    tokens: list[dict] = field(default_factory=list)  # {"token", "start", "end"}
    words: list[dict] = field(default_factory=list)  # BPE units only: pieces joined into {"word", "start", "end"}
    aligned: bool = True


@dataclass
class FileResult:
    key: str
    path: Path
    duration: float = 0.0
    segments: list[SegmentResult] = field(default_factory=list)
    error: str = ""

    @property
    def text(self) -> str:
        return join_texts(s.text for s in self.segments)


def join_texts(texts) -> str:
    """Join segment texts: Chinese needs no separator; words in Latin script do."""
    out = ""
    for text in texts:
        if out and text and out[-1].isascii() and out[-1].isalnum() and text[0].isascii() and text[0].isalnum():
            out += " "
        out += text
    return out


@dataclass
class _Piece:
    """One segment's features waiting for a batch."""
    file: int
    index: int
    span: Segment
    feats: np.ndarray


class Transcriber:
    def __init__(self, model_dir: Path, options: TranscribeOptions = TranscribeOptions()) -> None:
        from paddle_asr.export.onnx_backend import OnnxBackend
        from paddle_asr.export.runtime import load_backend

        options.vad.check()
        if options.batch_size < 1:
            raise AsrError(f"--batch_size must be at least 1, got {options.batch_size}")
        self.options = options
        self.meta, self.features, self.tokenizer = read_bundle(Path(model_dir))
        backend = load_backend(Path(model_dir), self.meta, num_threads=options.num_threads, runtime=options.runtime)
        self.runtime = "onnx" if isinstance(backend, OnnxBackend) else "paddle"
        if options.method == "auto":
            options = dataclasses.replace(
                options, method="attention_rescoring" if backend.has_decoder else "ctc_prefix_beam_search")
            self.options = options
        conf = DecodeConfig(methods=[options.method], beam_size=options.beam_size,
                            decoding_chunk_size=options.chunk_size, num_decoding_left_chunks=options.num_left_chunks,
                            context_list=options.context_list, context_score=options.context_score)
        check_config(conf, "the transcribe options")
        self.recognizer = Recognizer(backend, conf, self.tokenizer.units, context_graph_for(conf, self.tokenizer))
        self.rate = self.features.sample_rate
        self.frame_seconds = backend.subsampling_rate * self.features.frame_shift_ms / 1000
        # The fewest samples whose fbank gives the encoder one output frame.
        min_frames = int(self.meta.get("min_input_frames", 1))
        frame_len, shift = (round(self.rate * ms / 1000)
                            for ms in (self.features.frame_length_ms, self.features.frame_shift_ms))
        self.min_samples = frame_len + (min_frames - 1) * shift

    def segments_of(self, waveform: np.ndarray) -> list[Segment]:
        """The whole recording when it is short enough, else its speech segments, each at least
        as long as the encoder needs (widened within the recording when shorter)."""
        if len(waveform) <= self.options.segment_over * self.rate:
            return [Segment(0, len(waveform))]
        out = []
        for seg in split_on_silence(waveform, self.rate, self.options.vad):
            short = self.min_samples - (seg.end - seg.start)
            if short > 0:
                start = max(0, min(seg.start - short // 2, len(waveform) - self.min_samples))
                seg = Segment(start, start + self.min_samples)
            out.append(seg)
        return out

    def transcribe(self, inputs: list[AudioInput], progress=None) -> Iterator[FileResult]:
        """FileResults in input order; a failed input has `error` set. `progress(seconds)` is
        called with the seconds of audio decoded since its last call."""
        return self._transcribe(((FileResult(item.key, item.path), functools.partial(read_audio_resampled, item.path,
                                                                                     self.rate)) for item in inputs),
                                progress)

    def transcribe_waveform(self, waveform: np.ndarray, key: str = "audio") -> FileResult:
        """One recording in memory (mono float32 in the int16 range, at the model's rate), cut by the
        VAD as files are; `error` is set when it cannot be transcribed (e.g. too short)."""
        (result,) = self._transcribe([(FileResult(key, Path(key)), lambda: waveform)])
        return result

    def _transcribe(self, recordings: Iterable[tuple[FileResult, Callable[[], np.ndarray]]],
                    progress=None) -> Iterator[FileResult]:
        """`transcribe` over (result to fill, function reading its waveform) pairs."""
        results: dict[int, FileResult] = {}
        remaining: dict[int, int] = {}  # segments not yet decoded, per file
        reported: dict[int, float] = {}  # seconds of each file passed to `progress`
        queue: list[_Piece] = []
        emitted = 0

        def advance(i: int, upto: float) -> None:
            if progress and upto > reported.get(i, 0.0):
                progress(upto - reported.get(i, 0.0))
                reported[i] = upto

        def ready() -> Iterator[FileResult]:
            nonlocal emitted
            while emitted in results and not remaining.get(emitted):
                advance(emitted, results[emitted].duration)
                yield results.pop(emitted)
                emitted += 1

        for i, (result, read) in enumerate(recordings):
            results[i] = result
            try:
                waveform = read()
                result.duration = len(waveform) / self.rate
                if len(waveform) < self.min_samples:
                    raise AsrError(f"{result.path} is too short to transcribe ({result.duration:.3f} s)")
                spans = self.segments_of(waveform)
            except AsrError as e:
                result.error = str(e)
                spans = []
            result.segments = [SegmentResult(round(s.start / self.rate, 3), round(s.end / self.rate, 3)) for s in spans]
            remaining[i] = len(spans)
            for j, span in enumerate(spans):
                queue.append(_Piece(i, j, span, compute_fbank(waveform[span.start: span.end], self.features)))
                if len(queue) == self.options.batch_size:
                    self._decode(queue, results, remaining, advance)
                    queue = []
            yield from ready()
        if queue:
            self._decode(queue, results, remaining, advance)
        yield from ready()

    def _decode(self, batch: list[_Piece], results: dict[int, FileResult], remaining: dict[int, int], advance) -> None:
        lengths = np.array([p.feats.shape[0] for p in batch], np.int64)
        feats = np.zeros((len(batch), int(lengths.max()), batch[0].feats.shape[1]), np.float32)
        for k, p in enumerate(batch):
            feats[k, : lengths[k]] = p.feats
        hyps, ctc_log_probs, enc_lengths = self.recognizer.recognize_with_ctc(feats, lengths)
        for k, p in enumerate(batch):
            ids = hyps[self.options.method][k]
            seg = results[p.file].segments[p.index]
            seg.text = self.tokenizer.decode(ids)
            seg.tokens, seg.aligned = token_times(self.tokenizer, ids, ctc_log_probs[k, : enc_lengths[k]],
                                                  self.frame_seconds, seg.start, seg.end)
            if isinstance(self.tokenizer, BpeTokenizer):
                seg.words = word_times(self.tokenizer, ids, seg.tokens)
            remaining[p.file] -= 1
            advance(p.file, seg.end)


def token_times(tokenizer: CharTokenizer, ids: list[int], log_probs: np.ndarray, frame_seconds: float, start: float,
                end: float) -> tuple[list[dict], bool]:
    """[{"token", "start", "end"}] of the tokens of `ids` that decode to text, in seconds from the
    recording's start, from the CTC forced alignment over the segment's log-probs [T', V] (a segment
    from `start` to `end` s, `frame_seconds` per encoder frame); and whether the alignment succeeded."""
    spans = token_frame_spans(log_probs, ids, tokenizer.blank_id)
    aligned = spans is not None
    if spans is None:
        # More tokens than CTC frames can hold (possible with attention search): spread evenly.
        step = log_probs.shape[0] / max(1, len(ids))
        spans = [(int(u * step), int((u + 1) * step)) for u in range(len(ids))]
    tokens = []
    for token_id, (first, last) in zip(ids, spans):
        text = tokenizer.decode([token_id])
        if text:  # CTC may emit <sos/eos>, which is no text (the transcript drops it too)
            tokens.append({"token": text, "start": round(min(start + first * frame_seconds, end), 3),
                           "end": round(min(start + last * frame_seconds, end), 3)})
    return tokens, aligned


def word_times(tokenizer: BpeTokenizer, ids: list[int], tokens: list[dict]) -> list[dict]:
    """BPE pieces joined into words with times: a word starts at a piece beginning with `▁` (a bare
    `▁` piece starts the next one) and runs to the end of its last piece. `tokens` has one entry
    {"token", "start", "end"} per id that decodes to text, in order."""
    timed = iter(tokens)
    words: list[dict] = []
    new_word = True
    for i in ids:
        new_word |= tokenizer.units[i].startswith(WORD_START)
        if not tokenizer.decode([i]):
            continue
        tok = next(timed)
        if new_word or not words:
            words.append({"word": tok["token"], "start": tok["start"], "end": tok["end"]})
        else:
            words[-1]["word"] += tok["token"]
            words[-1]["end"] = tok["end"]
        new_word = False
    return words
