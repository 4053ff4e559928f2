"""The streaming recognizer behind `paddle-asr serve`, without any web code.

A stream has two halves. Its `ChunkCutter` runs where the audio arrives: PCM in pieces of any
length becomes Kaldi fbank frames as it comes (`IncrementalFbank`: the same frames
`features.compute_fbank` gives for the whole audio), cut into the encoder's chunk windows by the one
rule of `decode.recognizer.chunk_windows`. Its `StreamingSession` runs on the inference worker: the
`StreamingModel` runs waiting windows of many sessions through ONE `encode_chunks` call and ONE
`ctc_activation` call (the caller, `serve.worker`, decides which sessions go together), and each
session advances its own CTC prefix beam search (`decode.search.CtcPrefixBeam`, biased by the
transcriber's hotwords when it has a context list): the best prefix is the partial result. At the
end the n-best is rescored with the attention decoder as `paddle-asr transcribe --chunk_size N`
does (`Recognizer.rescore`; CTC-only models keep the best prefix), and token times come from the
CTC alignment (`transcribe.token_times`), so a stream's final result is transcribe's result for the
same audio.

Long streams are cut into segments by endpointing, as WeNet's runtime does (`EndpointRules`): a
segment ends after enough trailing blank frames, or when it reaches `max_segment` seconds. The
segment is finalized (rescored) and the encoder state starts afresh, so memory and encoder
positions stay bounded however long the stream runs; the final result joins the segments.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from paddle_asr.config import FeatureConfig
from paddle_asr.decode.search import CtcPrefixBeam
from paddle_asr.errors import AsrError
from paddle_asr.features import compute_fbank, kaldi_fbank, take_frames
from paddle_asr.transcribe import SegmentResult, Transcriber, join_texts, token_times


@dataclass(frozen=True)
class EndpointRules:
    """When a segment of a stream ends (WeNet runtime `CtcEndpointConfig`). A CTC frame is blank
    when P(blank) > blank_threshold; seconds count encoder frames. A rule set to 0 is off.

    Unlike WeNet, `max_segment` ends a segment even when nothing was recognised in it: a stream of
    noise must not grow the encoder's caches and positions without bound either."""

    blank_threshold: float = 0.8
    silence_without_text: float = 5.0  # trailing blank seconds that end a segment with no text yet
    silence_after_text: float = 1.0    # trailing blank seconds that end a segment after text
    max_segment: float = 20.0          # seconds of audio in one segment

    def check(self) -> None:
        if not 0.0 < self.blank_threshold < 1.0:
            raise AsrError(f"endpoint blank threshold must be in (0, 1), got {self.blank_threshold}")
        for name in ("silence_without_text", "silence_after_text", "max_segment"):
            if getattr(self, name) < 0:
                raise AsrError(f"endpoint {name} must be >= 0 seconds (0: off), got {getattr(self, name)}")

    def reached(self, segment_s: float, silence_s: float, has_text: bool) -> bool:
        if self.max_segment and segment_s >= self.max_segment:
            return True
        limit = self.silence_after_text if has_text else self.silence_without_text
        return bool(limit) and silence_s >= limit


# Chunks of history the server's attention caches keep by default: 5 s at chunk 16 (whole utterances
# of AISHELL's length), while the chunk program's shapes stop changing after 8 chunks (oneDNN builds
# its kernels per shape; with an unbounded cache every chunk of every stream is a new shape).
SERVE_LEFT_CHUNKS = 8


@dataclass(frozen=True)
class StreamOptions:
    chunk_size: int = 16        # encoder frames per chunk
    num_left_chunks: int = SERVE_LEFT_CHUNKS  # chunks of history the attention cache keeps (-1: all)
    endpoint: EndpointRules = EndpointRules()

    def check(self) -> None:
        if self.chunk_size < 1:
            raise AsrError(f"--chunk_size must be at least 1 encoder frame, got {self.chunk_size}")
        if self.num_left_chunks < -1:
            raise AsrError(f"--num_left_chunks must be -1 (all) or >= 0, got {self.num_left_chunks}")
        self.endpoint.check()


class IncrementalFbank:
    """`features.compute_fbank` of a stream whose samples arrive in pieces: each Kaldi frame (snip
    edges, no dither) reads only its own window of samples, so the frames computed as the samples
    come are the whole recording's frames. One kaldi-native-fbank computer per stream (building
    one, with its mel banks, for each piece cost more than the piece's frames); for the mel banks
    it refuses, the NumPy fbank of the samples from the first frame not yet computed on."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.hop = int(config.sample_rate * config.frame_shift_ms / 1000)  # as features.num_frames
        self._kaldi = kaldi_fbank(config)
        self._frames = 0                                # frames taken from the kaldi computer
        self._tail = np.zeros(0, np.float32)  # NumPy fbank: samples from the first frame not yet computed on

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """The frames [n, num_mel_bins] that the new samples complete."""
        samples = np.asarray(samples, np.float32)
        if self._kaldi is not None:
            self._kaldi.accept_waveform(float(self.config.sample_rate), samples)
            frames = take_frames(self._kaldi, self._frames, self.config)
            self._frames += len(frames)
            return frames
        self._tail = np.concatenate([self._tail, samples])
        frames = compute_fbank(self._tail, self.config)
        self._tail = self._tail[len(frames) * self.hop:]
        return frames


def streaming_refusal(backend, meta: dict) -> str:
    """Why the bundle cannot serve streams (one sentence), or '' when it can."""
    if backend.supports_streaming:
        return ""
    if meta.get("model") == "deepspeech2":
        why, streaming = "its RNNs read the audio in both directions", "conf/model/deepspeech2_online.yaml"
    else:
        why, streaming = "its encoder was not trained for chunks with causal convolutions", \
            "conf/model/chunk_conformer.yaml"
    return (f"this bundle cannot stream: {why} (it has no streaming encoder_chunk program); use POST "
            f"/paddlespeech/asr, or train and export a streaming model ({streaming}) for /paddlespeech/asr/streaming")


class StreamingModel:
    """What the sessions share: the bundle's backend, units, features and chunk geometry."""

    def __init__(self, transcriber: Transcriber, options: StreamOptions = StreamOptions()) -> None:
        options.check()
        self.transcriber, self.options = transcriber, options
        self.recognizer = transcriber.recognizer
        self.backend = backend = transcriber.recognizer.backend
        self.tokenizer, self.features = transcriber.tokenizer, transcriber.features
        self.rate, self.frame_seconds = transcriber.rate, transcriber.frame_seconds
        self.refusal = streaming_refusal(backend, transcriber.meta)
        self.hop = int(self.rate * self.features.frame_shift_ms / 1000)  # samples per fbank frame
        sub, self.context = backend.subsampling_rate, backend.right_context + 1
        self.window, self.stride = (options.chunk_size - 1) * sub + self.context, options.chunk_size * sub
        left = options.num_left_chunks
        self.required_cache_size = options.chunk_size * left if left >= 0 else -1
        self.rescore = "attention_rescoring" == transcriber.options.method
        # A segment ends before its encoder positions would pass the positional table, whatever the rules.
        self.max_segment_frames = int(transcriber.meta.get("max_encoder_frames") or 0) or None

    def new_session(self) -> StreamingSession:
        if self.refusal:
            raise AsrError(self.refusal)
        return StreamingSession(self)

    def encode(self, sessions: list[StreamingSession], rows: int = 0) -> None:
        """The next window of every session (all of one length) through the encoder at once, in a
        batch of `rows` >= len(sessions) rows: the first session's window fills the extra rows, so that
        a few batch sizes, and so oneDNN kernels, serve every number of streams."""
        self.accept(sessions, self.run_encoder(sessions, rows))

    def run_encoder(self, sessions: list[StreamingSession], rows: int = 0) -> EncodedChunks:
        """`encode`'s encoder and CTC calls alone: they read the sessions' next windows and states and
        change nothing, so they may run on another thread while the sessions wait (serve.worker)."""
        xs = np.stack([s.next_window() for s in sessions])
        states = [s.state for s in sessions]
        if rows > len(sessions):
            xs = np.concatenate([xs, np.repeat(xs[:1], rows - len(sessions), axis=0)])
            states += states[:1] * (rows - len(sessions))
        enc, states = self.backend.encode_chunks(xs, states, self.required_cache_size)
        log_probs = self.backend.ctc_activation(enc)  # all rows: the same shapes as encode_chunks
        return EncodedChunks(enc, log_probs, states)

    def accept(self, sessions: list[StreamingSession], encoded: EncodedChunks) -> None:
        """Each session takes its row of `run_encoder`'s result: state, prefix search, partial result."""
        for i, session in enumerate(sessions):
            session.accept_chunk(encoded.enc[i: i + 1], encoded.log_probs[i], encoded.states[i])

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run a full chunk window of fresh streams at each batch size once, so that oneDNN builds its
        kernels for those shapes before the first stream instead of during it (a build costs several
        chunks' compute). With a bounded attention cache every later chunk has these shapes too."""
        if self.refusal:
            return
        for rows in batch_sizes:
            xs = np.zeros((rows, self.window, self.features.num_mel_bins), np.float32)
            enc, _ = self.backend.encode_chunks(xs, [self.backend.new_stream_state() for _ in range(rows)],
                                                self.required_cache_size)
            self.backend.ctc_activation(enc)

    def finalize_segment(self, session: StreamingSession, end_s: float) -> SegmentResult:
        """The current segment's final hypothesis (attention rescoring of the streamed n-best, or the
        best CTC prefix), its text and token times; `end_s`: where the segment ends in the stream."""
        seg = SegmentResult(round(session.segment_start * self.hop / self.rate, 3), round(end_s, 3))
        if not session.enc:
            return seg
        enc = np.concatenate(session.enc, axis=1)
        log_probs = np.concatenate(session.log_probs, axis=0)
        if self.rescore:
            (ids,) = self.recognizer.rescore([session.beam.nbest()], enc, np.array([enc.shape[1]], np.int64))
        else:
            ids = session.beam.best()
        seg.text = self.tokenizer.decode(ids)
        seg.tokens, seg.aligned = token_times(self.tokenizer, ids, log_probs, self.frame_seconds, seg.start, seg.end)
        return seg


class ChunkCutter:
    """The audio side of a stream, run where the audio arrives (the web front end): PCM -> fbank
    frames -> the encoder's chunk windows, by the rule of `decode.recognizer.chunk_windows`. Holds
    only the frames of windows not yet cut."""

    def __init__(self, model: StreamingModel) -> None:
        self.model = model
        self.samples = 0                                # PCM samples received
        self._fbank = IncrementalFbank(model.features)
        self._frames = 0                                # fbank frames computed
        self._feats = np.zeros((0, model.features.num_mel_bins), np.float32)
        self._feats_start = 0                           # frame index of _feats[0]
        self.cursor = 0                                 # frame where the next window starts

    def accept_pcm(self, pcm: bytes) -> list[Window]:
        """16-bit little-endian mono PCM at the model's rate (any number of whole samples) -> the
        chunk windows it completes."""
        if len(pcm) % 2:
            raise AsrError(f"a frame of {len(pcm)} bytes is not whole 16-bit samples")
        return self.accept_samples(np.frombuffer(pcm, "<i2").astype(np.float32))

    def accept_samples(self, samples: np.ndarray) -> list[Window]:
        """Mono samples in the int16 range at the model's rate -> the chunk windows they complete."""
        self.samples += len(samples)
        frames = self._fbank.accept(samples)
        if len(frames):
            self._frames += len(frames)
            self._feats = np.concatenate([self._feats, frames])
        return self._cut(finished=False)

    def finish(self) -> list[Window]:
        """The windows left at the end of the audio, the last one possibly shorter."""
        return self._cut(finished=True)

    def _cut(self, finished: bool) -> list[Window]:
        m, windows = self.model, []
        while (available := self._frames - self.cursor) >= m.window or (finished and available >= m.context):
            start = self.cursor - self._feats_start
            windows.append(Window(self.cursor, self._feats[start: start + m.window]))
            self.cursor += m.stride
        drop = min(self.cursor, self._frames) - self._feats_start
        self._feats, self._feats_start = self._feats[drop:], self._feats_start + drop
        return windows


@dataclass(frozen=True)
class EncodedChunks:
    """`StreamingModel.run_encoder`'s result: rows in the order of its sessions (then padding rows)."""
    enc: np.ndarray        # [B, t', d]
    log_probs: np.ndarray  # [B, t', V]
    states: list


@dataclass(frozen=True)
class Window:
    start: int         # its first fbank frame in the stream
    feats: np.ndarray  # [W, num_mel_bins]


class StreamingSession:
    """The recognition side of a stream, run on the inference worker: its windows waiting for the
    encoder, encoder state, the current segment's encoder output, CTC log-probs and prefix beam,
    and the finished segments. `partial_text` is the latest partial result, published for the
    front end to read from its own thread."""

    def __init__(self, model: StreamingModel) -> None:
        self.model = model
        self.pending: deque[Window] = deque()
        self.finishing = False                          # the end of the audio has arrived
        self.end_s = 0.0                                # and where it is, in seconds
        self.segments: list[SegmentResult] = []
        self.partial_text = ""
        self.next_start = 0                             # fbank frame of the window after the last encoded
        self._new_segment(0)

    def _new_segment(self, start_frame: int) -> None:
        self.segment_start = start_frame
        self.state = self.model.backend.new_stream_state()
        self.beam = CtcPrefixBeam(self.model.transcriber.options.beam_size, self.model.tokenizer.blank_id,
                                  self.model.recognizer.context)
        self.enc: list[np.ndarray] = []                 # [1, t', d] per chunk of this segment
        self.log_probs: list[np.ndarray] = []           # [t', V] per chunk of this segment
        self.segment_frames = 0                         # encoder frames in this segment
        self.trailing_blank = 0                         # encoder frames of blank at its end

    def next_window(self) -> np.ndarray | None:
        return self.pending[0].feats if self.pending else None

    def accept_chunk(self, enc: np.ndarray, log_probs: np.ndarray, state) -> None:
        """The encoder output [1, t', d], CTC log-probs [t', V] and new state of `next_window()`."""
        window = self.pending.popleft()
        self.state = state
        self.enc.append(enc)
        self.log_probs.append(log_probs)
        self.beam.advance(log_probs)
        self.segment_frames += log_probs.shape[0]
        blank = np.exp(log_probs[:, self.model.tokenizer.blank_id]) > self.model.options.endpoint.blank_threshold
        speech = np.flatnonzero(~blank)
        self.trailing_blank = self.trailing_blank + len(blank) if not len(speech) else len(blank) - 1 - speech[-1]
        self.next_start = window.start + self.model.stride
        self.partial_text = self._partial()

    def endpoint_reached(self) -> bool:
        m, fs = self.model, self.model.frame_seconds
        if m.max_segment_frames and self.segment_frames + m.options.chunk_size > m.max_segment_frames:
            return True
        return self.model.options.endpoint.reached(self.segment_frames * fs, self.trailing_blank * fs,
                                                   bool(self.beam.best()))

    def end_segment(self) -> None:
        """Finalize the current segment at an endpoint and start the next one where the audio goes on."""
        seg = self.model.finalize_segment(self, self.next_start * self.model.hop / self.model.rate)
        if seg.text:
            self.segments.append(seg)
        self._new_segment(self.next_start)
        self.partial_text = self._partial()

    def _partial(self) -> str:
        """The finished segments' text and the current segment's best CTC prefix."""
        current = self.model.tokenizer.decode(self.beam.best())
        return join_texts([*(s.text for s in self.segments), current])

    def final_segments(self) -> list[SegmentResult]:
        """After the end of the audio and its last window: every segment with text, the last one
        finalized (rescored)."""
        seg = self.model.finalize_segment(self, self.end_s)
        return [*self.segments, seg] if seg.text else list(self.segments)

    def final(self) -> dict:
        """After the end of the audio and its last window: the PaddleSpeech reply fields `result` and
        `times` ([{"w": unit, "bg": s, "ed": s}], seconds from the start of the stream)."""
        segments = self.final_segments()
        times = [{"w": t["token"], "bg": t["start"], "ed": t["end"]} for s in segments for t in s.tokens]
        return {"result": join_texts(s.text for s in segments), "times": times}


class LocalStream:
    """One stream decoded on the caller's thread (no worker): the Python API's streams
    (`api.Stream`), tests and tools. The server runs sessions through `serve.worker`."""

    def __init__(self, model: StreamingModel, max_batch: int = 1) -> None:
        self.model, self.max_batch = model, max_batch
        self.cutter, self.session = ChunkCutter(model), model.new_session()

    def accept(self, windows: list[Window]) -> str:
        """Encode the windows the new audio completed; returns the partial result."""
        self.session.pending.extend(windows)
        run_ready(self.model, [self.session], self.max_batch)
        return self.session.partial_text

    def finish(self) -> StreamingSession:
        """The end of the audio: its last windows encoded; the session's `final*` give the result."""
        self.accept(self.cutter.finish())
        self.session.finishing, self.session.end_s = True, self.cutter.samples / self.model.rate
        return self.session


def stream_pcm(model: StreamingModel, pcm_pieces, max_batch: int = 1) -> dict:
    """One stream through `model` on this thread: the pieces of PCM bytes, then the end; returns the
    server's final reply fields (`StreamingSession.final`)."""
    stream = LocalStream(model, max_batch)
    for piece in pcm_pieces:
        stream.accept(stream.cutter.accept_pcm(piece))
    return stream.finish().final()


def run_ready(model: StreamingModel, sessions: list[StreamingSession], max_batch: int) -> None:
    """Encode every waiting window of `sessions`, batching up to `max_batch` windows of one length
    per call, and end segments at endpoints."""
    while True:
        ready = [(s, w) for s in sessions if (w := s.next_window()) is not None]
        if not ready:
            return
        width = ready[0][1].shape[0]  # full windows go together; a stream's shorter last window goes alone
        batch = [s for s, w in ready if w.shape[0] == width][: max_batch if width == model.window else 1]
        model.encode(batch)
        for s in batch:
            if s.endpoint_reached():
                s.end_segment()
