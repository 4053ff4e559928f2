"""The one inference thread of `paddle-asr serve`: every stream's chunks go through it together.

The web front end (asyncio, `serve.app`) cuts each stream's audio into chunk windows itself
(`engine.ChunkCutter`, cheap) and answers a frame that completes no window at once with the latest
partial result. Everything else goes to the worker through a bounded queue, as jobs whose futures
the front end awaits: a stream's new windows (reply: the partial result once they are encoded),
its end (reply: the final result), its disconnection, and offline requests (a function run on this
thread, between ticks, so that the Paddle predictors, which are not thread-safe, only ever run here
and on this thread's chunk encoder, never both at once on one program).

Each tick takes the jobs that arrived, then gathers one ready chunk window from every stream that
has one (at most `max_batch`, streams served round-robin) and runs them as ONE `encode_chunks` call
and ONE `ctc_activation` call (`StreamingModel.run_encoder`); each stream's state is gathered from
and scattered back to its session. That call runs on a thread of its own (the chunk encoder's)
while this thread lands the tick before it: each of its streams advances its prefix search and
its endpoint (`StreamingModel.accept`; the prefix search is compiled, `decode.compiled_search`), so
the two overlap on two cores. A stream is in one tick at a time, so its windows still go in order and
each is searched before the next is encoded. Then every stream whose audio is all encoded gets its reply. A
finished stream leaves the worker for the final-result thread, which rescores it (the attention
decoder costs as much as several ticks) while the ticks of the other streams go on; the two
threads share no predictor run (`export.inference.Predictor` runs take turns). One batched call
per tick pays a program's per-call costs once for every stream in it; how much that saves depends
on the runtime (on Paddle Inference a window in a batch costs half what it costs alone, on ONNX
Runtime a fifth to a third less: bench/RESULTS.md).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from paddle_asr.errors import AsrError
from paddle_asr.serve.engine import ChunkCutter, EncodedChunks, StreamingModel, StreamingSession, Window

log = logging.getLogger("paddle_asr.serve")

# Batch sizes the chunk program runs at (a batch is padded up to the next one, at most 25 % more rows):
# oneDNN builds kernels per input shape and keeps 32 shapes per program, so every number of streams
# from 1 to 64 must not be a shape of its own.
BATCH_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64)
# Streams per encoder call unless --max_batch says otherwise. A window costs about as much in a
# batch of 8 as in one of 20 (ONNX Runtime INT8, one thread: 9.1 / 9.3 ms), but every stream in a
# tick waits for all of it: at 44 INT8 streams ticks of up to 44 windows took 270-300 ms and the p95
# partial latency was 632 ms, against 207 ms with 8 and 119 ms with 4 (bench/RESULTS.md).
DEFAULT_MAX_BATCH = 8


def warm_up_sizes(max_batch: int) -> list[int]:
    """Every batch size `padded_batch` gives for up to `max_batch` rows."""
    return sorted({padded_batch(rows, max_batch) for rows in range(1, max_batch + 1)})


def padded_batch(rows: int, max_batch: int) -> int:
    """The batch size `rows` windows run at: the next of BATCH_SIZES, or `rows` past them or `max_batch`."""
    size = next((b for b in BATCH_SIZES if b >= rows), rows)
    return size if size <= max_batch else rows


class ServerBusy(AsrError):
    """The job queue is full: the server is overloaded; the client should retry later."""


@dataclass(eq=False)
class Stream:
    """One stream: its audio side (the front end's), its recognition side and the reply it owes
    (the worker's)."""
    cutter: ChunkCutter
    session: StreamingSession
    reply: Future | None = None


@dataclass(eq=False)
class _Job:
    kind: str  # "windows", "end", "drop" or "call"
    stream: Stream | None = None
    payload: object = None
    future: Future = field(default_factory=Future)


@dataclass(eq=False)
class _Tick:
    """A batch of streams whose windows are on the chunk encoder's thread."""
    streams: list[Stream]
    encoded: Future  # -> EncodedChunks


class InferenceWorker:
    def __init__(self, model: StreamingModel, *, max_batch: int = DEFAULT_MAX_BATCH, queue_size: int = 64) -> None:
        if max_batch < 1 or queue_size < 1:
            raise AsrError(f"--max_batch ({max_batch}) and the queue size ({queue_size}) must be at least 1")
        self.model, self.max_batch, self.queue_size = model, max_batch, queue_size
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._streams: dict[Stream, None] = {}  # insertion order = round-robin order
        self._stopping = False
        self._warm = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._finals: queue.SimpleQueue[tuple[Future, StreamingSession] | None] = queue.SimpleQueue()
        self._finisher = threading.Thread(target=self._finish, name="final-results", daemon=True)
        # The chunk program runs only here (after warm-up here too: oneDNN keeps kernels per thread).
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-encoder")
        self._in_flight: _Tick | None = None
        self.ticks = 0
        self.batched_windows = 0
        # Runs and seconds of the chunk encoder's and final-result threads' work (GET /health's load).
        self.runs = {"encoder": 0, "final": 0}
        self.busy_seconds = {"encoder": 0.0, "final": 0.0}

    # ------------------------------------------------------------------ the front end's side
    def start(self, warm_up: bool = True) -> None:
        """Start the threads; with `warm_up`, return once the chunk program has run every batch size
        (on the inference thread: oneDNN keeps its kernels per thread)."""
        self._warm_up = warm_up
        self._thread.start()
        self._finisher.start()
        self._warm.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued and the final results they owe, then end the threads."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        self._finals.put(None)
        self._finisher.join(timeout)

    def open_stream(self) -> Stream:
        return Stream(ChunkCutter(self.model), self.model.new_session())

    def audio(self, stream: Stream, pcm: bytes) -> Future:
        """On the front end's thread: cut the stream's new PCM into chunk windows (AsrError when it
        is not whole 16-bit samples) -> the partial result (str) once they are encoded; at once when
        the audio completes no window."""
        windows = stream.cutter.accept_pcm(pcm)
        if windows:
            return self.windows(stream, windows)
        done: Future = Future()
        done.set_result(stream.session.partial_text)
        return done

    def windows(self, stream: Stream, windows: list[Window]) -> Future:
        """-> the partial result (str) once these chunk windows of the stream are encoded."""
        return self._submit(_Job("windows", stream, windows))

    def end(self, stream: Stream) -> Future:
        """-> the final result ({"result", "times"}) after the stream's last windows."""
        return self._submit(_Job("end", stream, (stream.cutter.finish(), stream.cutter.samples / self.model.rate)))

    def drop(self, stream: Stream) -> None:
        """Forget a stream whose client went away; never refused, so no stream is left behind."""
        self._submit(_Job("drop", stream), bounded=False)

    def call(self, fn: Callable[[], object]) -> Future:
        """-> fn()'s result, run on the inference thread between ticks (offline requests)."""
        return self._submit(_Job("call", payload=fn))

    def _submit(self, job: _Job, bounded: bool = True) -> Future:
        with self._wake:
            if self._stopping and job.kind != "drop":
                raise ServerBusy("the server is shutting down")
            if bounded and len(self._jobs) >= self.queue_size:
                raise ServerBusy(f"the server is overloaded ({self.queue_size} requests waiting); retry later")
            self._jobs.append(job)
            self._wake.notify()
        return job.future

    # ------------------------------------------------------------------ the inference thread
    def _run(self) -> None:
        try:
            if self._warm_up:
                self._encoder.submit(self.model.warm_up, warm_up_sizes(self.max_batch)).result()
        except Exception:  # streams still run; their first chunks build the kernels instead
            log.exception("warming up the chunk program failed")
        self._warm.set()
        while True:
            with self._wake:
                while not self._jobs and not self._has_work() and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._jobs and not self._has_work():
                    break
                jobs = list(self._jobs)
                self._jobs.clear()
            for job in jobs:
                self._handle(job)
            started = self._start_tick()
            self._land()  # the tick before, while `started` runs
            self._in_flight = started
            self._reply()
        self._encoder.shutdown()
        for stream in self._streams:  # only streams whose clients never came back
            if stream.reply is not None:
                stream.reply.cancel()

    def _has_work(self) -> bool:
        return self._in_flight is not None or any(s.reply is not None for s in self._streams)

    def _handle(self, job: _Job) -> None:
        if job.kind == "call":
            self._land()  # the call may run the programs the chunk encoder's thread is running
            _settle(job.future, job.payload)
            return
        stream = job.stream
        if job.kind == "drop":
            self._streams.pop(stream, None)
            if stream.reply is not None:
                stream.reply.cancel()
            return
        self._streams[stream] = None
        if job.kind == "end":
            windows, stream.session.end_s = job.payload
            stream.session.finishing = True
        else:
            windows = job.payload
        stream.session.pending.extend(windows)
        stream.reply = job.future

    def _start_tick(self) -> _Tick | None:
        """One batched encoder call, started on the chunk encoder's thread, over the streams with a
        ready window that are not in the tick in flight."""
        busy = set(self._in_flight.streams) if self._in_flight else set()
        ready = [(s, w.shape[0]) for s in self._streams
                 if s not in busy and (w := s.session.next_window()) is not None]
        if not ready:
            return None
        # Streams whose audio has ended go first: their client waits for the final result.
        ready.sort(key=lambda x: not x[0].session.finishing)
        width = ready[0][1]  # full windows go together; a stream's shorter last window goes alone
        batch = [s for s, n in ready if n == width][: self.max_batch if width == self.model.window else 1]
        rows = padded_batch(len(batch), self.max_batch)
        return _Tick(batch, self._encoder.submit(self._timed, "encoder", self.model.run_encoder,
                                                 [s.session for s in batch], rows))

    def _timed(self, work: str, fn: Callable, *args):
        """fn(*args), counted in `runs` and `busy_seconds` before its result goes anywhere, so that
        /health never lags a reply."""
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.runs[work] += 1
            self.busy_seconds[work] += time.perf_counter() - start

    def _land(self) -> None:
        """The tick in flight's results into its streams that are still open (a client may have gone);
        none is in flight afterwards."""
        if self._in_flight is None:
            return
        tick, self._in_flight = self._in_flight, None
        batch = tick.streams
        try:
            encoded: EncodedChunks = tick.encoded.result()
            open_streams = [s for s in batch if s in self._streams]
            self.model.accept([s.session for s in batch], encoded)
            for s in open_streams:
                if s.session.endpoint_reached():
                    s.session.end_segment()
        except Exception as e:  # a failing batch ends its streams, never the server
            log.exception("encoder failed for %d stream(s)", len(batch))
            for s in batch:
                self._fail(s, e)
            return
        self.ticks += 1
        self.batched_windows += len(batch)
        for s in open_streams:  # to the back of the round-robin order
            self._streams.pop(s, None)
            self._streams[s] = None

    def _reply(self) -> None:
        for stream in [s for s in self._streams if s.reply is not None and s.session.next_window() is None]:
            reply, stream.reply = stream.reply, None
            if not stream.session.finishing:
                _settle(reply, lambda s=stream.session: s.partial_text)
                continue
            del self._streams[stream]
            self._finals.put((reply, stream.session))

    def _finish(self) -> None:
        """The final-result thread: rescore finished streams, in the order they finished."""
        while (item := self._finals.get()) is not None:
            reply, session = item
            _settle(reply, functools.partial(self._timed, "final", session.final))

    def load(self) -> dict:
        """What the worker's threads have done since the server started (GET /health's "load")."""
        return {"encoder_calls": self.ticks, "encoder_windows": self.batched_windows,
                "encoder_busy_s": round(self.busy_seconds["encoder"], 3), "finals": self.runs["final"],
                "final_busy_s": round(self.busy_seconds["final"], 3)}

    def _fail(self, stream: Stream, error: Exception) -> None:
        self._streams.pop(stream, None)
        if stream.reply is not None:
            _settle(stream.reply, _raiser(error))
            stream.reply = None


def _settle(future: Future, fn: Callable[[], object]) -> None:
    """future <- fn() or the exception it raised; the worker thread carries on either way. A
    future its waiter cancelled (the client went away) is left alone."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except Exception as e:
        if not isinstance(e, AsrError):
            log.exception("request failed")
        future.set_exception(e)


def _raiser(error: Exception) -> Callable[[], object]:
    def fail():
        raise error
    return fail
