"""The Python API: `paddle_asr.load(bundle)` returns a `SpeechRecognizer` for an exported bundle.

    import paddle_asr
    asr = paddle_asr.load("exp/conformer/export/int8")
    result = asr.transcribe("BAC009S0764W0121.wav")        # a path, or an array with sample_rate=
    print(result.text, [(t.text, t.start, t.end) for t in result.tokens])
    stream = asr.stream()                                   # chunk by chunk, as the server streams
    for piece in pieces:                                    # int16 bytes or arrays at asr.sample_rate
        print(stream.feed(piece))                           # the partial result so far
    print(stream.finish().text)                             # the final result, attention-rescored

`paddle-asr transcribe` and `paddle-asr serve` are built on this object: a result here is the
command's result for the same audio and options.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle_asr.config import DecodeConfig
from paddle_asr.data.audio import read_audio_resampled, resample
from paddle_asr.data.audio_inputs import AudioInput
from paddle_asr.errors import AsrError
from paddle_asr.serve.engine import SERVE_LEFT_CHUNKS, LocalStream, StreamingModel, StreamOptions
from paddle_asr.transcribe import FileResult, SegmentResult, TranscribeOptions, Transcriber, join_texts

Audio = str | Path | np.ndarray


@dataclass(frozen=True)
class Token:
    """A unit of the model (a character, or a BPE piece) and its time in seconds from the start."""
    text: str
    start: float
    end: float
    conf: float | None = None  # alignment only: the unit's posterior on its CTC spike


@dataclass(frozen=True)
class Word:
    """A word of a BPE model's output (its pieces joined), or of an aligned text, and its time."""
    text: str
    start: float
    end: float
    conf: float | None = None  # alignment only: the lowest of its tokens'


@dataclass(frozen=True)
class Segment:
    """A stretch of the recording decoded on its own: the VAD's cut of a long recording, or a
    stream's endpointed segment."""
    start: float
    end: float
    text: str
    tokens: tuple[Token, ...] = ()
    words: tuple[Word, ...] = ()
    aligned: bool = True  # False: the CTC alignment failed and token times are spread evenly

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text,
                "tokens": [{"token": t.text, "start": t.start, "end": t.end} for t in self.tokens],
                **({"words": [{"word": w.text, "start": w.start, "end": w.end} for w in self.words]}
                   if self.words else {}),
                **({} if self.aligned else {"aligned": False})}


@dataclass(frozen=True)
class Result:
    text: str
    duration: float  # seconds
    segments: tuple[Segment, ...] = ()
    key: str = ""
    path: str = ""
    error: str = ""  # only from `transcribe_many`: why this input could not be transcribed

    @property
    def tokens(self) -> tuple[Token, ...]:
        return tuple(t for s in self.segments for t in s.tokens)

    @property
    def words(self) -> tuple[Word, ...]:
        return tuple(w for s in self.segments for w in s.words)

    def to_json(self) -> dict:
        """`paddle-asr transcribe --format json`'s line for this recording."""
        return {"key": self.key, "path": self.path, "duration": self.duration, "text": self.text,
                "segments": [s.to_json() for s in self.segments]}


def _segment(seg: SegmentResult) -> Segment:
    return Segment(seg.start, seg.end, seg.text, tuple(Token(t["token"], t["start"], t["end"]) for t in seg.tokens),
                   tuple(Word(w["word"], w["start"], w["end"]) for w in seg.words), seg.aligned)


def result_of(file: FileResult) -> Result:
    """The typed form of transcribe's result for one recording."""
    return Result(file.text, round(file.duration, 3), tuple(_segment(s) for s in file.segments), file.key,
                  str(file.path), file.error)


def samples_at(audio: np.ndarray | bytes, sample_rate: int, rate: int) -> np.ndarray:
    """Mono samples in the int16 range (as Kaldi's fbank reads them) at the model's `rate`, from
    int16 PCM bytes, an integer array, or a float array in [-1, 1] (soundfile's, librosa's);
    a 2-D array is [samples, channels]."""
    if isinstance(audio, bytes | bytearray):
        if len(audio) % 2:
            raise AsrError(f"{len(audio)} bytes of PCM are not whole 16-bit samples")
        audio = np.frombuffer(audio, "<i2")
    x = np.asarray(audio)
    if x.ndim == 2:
        x = x.mean(axis=1) if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32).mean(axis=1)
    if x.ndim != 1:
        raise AsrError(f"audio must be 1-D samples or 2-D [samples, channels], got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        x = x * 32768.0
    elif not np.issubdtype(x.dtype, np.integer):
        raise AsrError(f"audio samples must be integers (int16 PCM) or floats in [-1, 1], got {x.dtype}")
    return resample(x.astype(np.float32), int(sample_rate), rate)


class SpeechRecognizer:
    """An exported bundle loaded for recognition (see `load`)."""

    def __init__(self, bundle: Path, options: TranscribeOptions) -> None:
        self.bundle = Path(bundle)
        self.transcriber = Transcriber(self.bundle, options)
        self._streaming: dict[StreamOptions, StreamingModel] = {}
        self._aligner = None

    @property
    def sample_rate(self) -> int:
        return self.transcriber.rate

    @property
    def runtime(self) -> str:
        """paddle (Paddle Inference) or onnx (ONNX Runtime), as `--runtime auto` chose."""
        return self.transcriber.runtime

    @property
    def precision(self) -> str:
        return self.transcriber.meta.get("precision", "fp32")

    def transcribe(self, audio: Audio, sample_rate: int | None = None) -> Result:
        """One recording: a file path, or samples (`sample_rate` required). Long recordings are cut
        by the VAD as `paddle-asr transcribe` cuts them. Raises AsrError when it cannot be read."""
        if isinstance(audio, str | Path):
            (result,) = self.transcriber.transcribe([AudioInput(Path(audio).stem, Path(audio))])
        else:
            samples = self._samples(audio, sample_rate, "transcribe")[2]
            result = self.transcriber.transcribe_waveform(samples, key="audio")
        if result.error:
            raise AsrError(result.error)
        return result_of(result)

    def transcribe_many(self, inputs: Iterable[AudioInput], progress=None) -> Iterator[Result]:
        """Many files, decoded in batches, in input order; one that cannot be read or transcribed
        comes back with `error` set. `progress(seconds)` is called as audio is decoded."""
        for file in self.transcriber.transcribe(list(inputs), progress=progress):
            yield result_of(file)

    def align(self, audio: Audio, text: str, sample_rate: int | None = None) -> Result:
        """The CTC Viterbi alignment of the given `text` (not a hypothesis) to the recording, as
        `paddle-asr align` computes it: one segment with its words and tokens, with times and
        confidences. Raises AsrError with the reason when it cannot be aligned."""
        from paddle_asr.align import Aligner, AlignOptions

        if self._aligner is None:
            options = self.transcriber.options
            self._aligner = Aligner(self.bundle, AlignOptions(num_threads=options.num_threads, runtime=options.runtime),
                                    backend=self.transcriber.recognizer.backend)
        key, path, samples = self._samples(audio, sample_rate, "align")
        a = self._aligner.align(key, path, samples, text)
        words = tuple(Word(w["word"], w["start"], w["end"], w["conf"]) for w in a.words)
        tokens = tuple(Token(t["token"], t["start"], t["end"], t["conf"]) for t in a.tokens)
        seg = Segment(words[0].start if words else 0.0, words[-1].end if words else 0.0, a.text, tokens, words)
        return Result(a.text, round(a.duration, 3), (seg,), key, str(path))

    def _samples(self, audio: Audio, sample_rate: int | None, what: str) -> tuple[str, Path, np.ndarray]:
        """(key, path, mono samples in the int16 range at the model's rate) of a path or an array."""
        if isinstance(audio, str | Path):
            return Path(audio).stem, Path(audio), read_audio_resampled(Path(audio), self.sample_rate)
        if sample_rate is None:
            raise AsrError(f"{what}(samples) needs sample_rate= (the rate of the samples, e.g. 16000)")
        return "audio", Path("audio"), samples_at(audio, sample_rate, self.sample_rate)

    def streaming_model(self, options: StreamOptions | None = None) -> StreamingModel:
        """The chunk-by-chunk recognizer that streams share (the server's), made once per options."""
        options = options or StreamOptions()
        if options not in self._streaming:
            self._streaming[options] = StreamingModel(self.transcriber, options)
        return self._streaming[options]

    def stream(self, *, chunk_size: int = 16, num_left_chunks: int = SERVE_LEFT_CHUNKS) -> Stream:
        """A new stream of audio at the model's rate (`sample_rate`): feed it as it comes, read
        partial results, then `finish()`. Raises AsrError, with the reason, for a bundle that cannot
        stream (a full-attention Conformer, a bidirectional DeepSpeech2)."""
        return Stream(self.streaming_model(StreamOptions(chunk_size, num_left_chunks)))


class Stream:
    """One stream, decoded on the caller's thread, chunk by chunk as the server decodes it."""

    def __init__(self, model: StreamingModel) -> None:
        self._stream = LocalStream(model)
        self._finished = False

    @property
    def partial(self) -> str:
        return self._stream.session.partial_text

    def feed(self, audio: np.ndarray | bytes) -> str:
        """More audio at the model's rate: int16 PCM bytes, integer samples, or float samples in
        [-1, 1]; any length. Returns the partial result so far."""
        if self._finished:
            raise AsrError("this stream has finished; start a new one with stream()")
        rate = self._stream.model.rate
        return self._stream.accept(self._stream.cutter.accept_samples(samples_at(audio, rate, rate)))

    def finish(self) -> Result:
        """The end of the audio: the final result (attention rescoring of the streamed n-best for a
        model with a decoder) with token times, as `paddle-asr transcribe --chunk_size N` gives."""
        if self._finished:
            raise AsrError("this stream has already finished")
        self._finished = True
        session = self._stream.finish()
        segments = session.final_segments()
        return Result(join_texts(s.text for s in segments), round(session.end_s, 3),
                      tuple(_segment(s) for s in segments))


def load(bundle: str | Path, *, runtime: str = "auto", method: str = "auto", beam_size: int = 10, chunk_size: int = -1,
         num_left_chunks: int = -1, num_threads: int = 2, batch_size: int = 8, context_list: str | Path = "",
         context_score: float = DecodeConfig.context_score) -> SpeechRecognizer:
    """A recognizer for the exported bundle `bundle` (FP32 or INT8, U2 or DeepSpeech2, or its ONNX
    export). `method`: auto (attention rescoring when the model has a decoder, else CTC prefix beam
    search) or one of the decoding methods; `chunk_size` > 0 makes `transcribe` run the encoder
    chunk by chunk as a stream does; `runtime`: auto, paddle or onnx (see `paddle-asr transcribe`).
    `context_list`: a file of hotwords, one phrase a line, which prefix beam search favours by
    `context_score` per matched unit, in `transcribe` and in streams (docs/decoding.md)."""
    return SpeechRecognizer(Path(bundle), TranscribeOptions(
        method=method, beam_size=beam_size, chunk_size=chunk_size, num_left_chunks=num_left_chunks,
        num_threads=num_threads, batch_size=batch_size, runtime=runtime, context_list=str(context_list or ""),
        context_score=context_score))
