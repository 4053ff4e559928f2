"""The web front end of `paddle-asr serve` (FastAPI on uvicorn, as PaddleSpeech's server): its three
endpoints speak PaddleSpeech 1.5.0's protocols, so its clients work unchanged (docs/serving.md).

    WebSocket /paddlespeech/asr/streaming   the `asr_online` protocol: {"signal": "start"} ->
                                            server_ready; binary PCM frames -> one {"result": partial}
                                            each; {"signal": "end"} -> finished with result and times
    POST /paddlespeech/asr                  a whole recording (base64), cut by the VAD as transcribe does
    GET /health                             the bundle, its precision and runtime, open and maximum streams

The handlers only parse and reply; all model work happens on the inference worker (`serve.worker`),
which they await. A client that misbehaves gets a reply saying what is wrong and never affects the
other streams. SIGTERM stops new streams, lets the open ones finish (up to `drain_seconds`), then
the server exits with status 0.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect

from paddle_asr.api import load
from paddle_asr.config import DecodeConfig
from paddle_asr.cpu_settings import keep_freed_memory_for_reuse, let_idle_threads_sleep, predictor_threads
from paddle_asr.data.audio import decode_audio
from paddle_asr.errors import AsrError
from paddle_asr.serve.admission import DEFAULT_MAX_LATENCY, LatencyGauge, StreamCap
from paddle_asr.serve.engine import SERVE_LEFT_CHUNKS, EndpointRules, StreamOptions
from paddle_asr.serve.worker import DEFAULT_MAX_BATCH, InferenceWorker, ServerBusy, Stream

log = logging.getLogger("paddle_asr.serve")

STREAMING_PATH = "/paddlespeech/asr/streaming"
OFFLINE_PATH = "/paddlespeech/asr"
READY = {"status": "ok", "signal": "server_ready"}
NO_VALID_JSON = {"status": "ok", "message": "no valid json data"}  # PaddleSpeech's reply to any other text
OFFLINE_QUEUE = 8  # offline requests that may wait for the worker besides one job per open stream
# WebSocket close codes (RFC 6455): the endpoint cannot serve this / try again later.
CLOSE_UNSUPPORTED, CLOSE_TRY_LATER = 1003, 1013


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8090
    chunk_size: int = 16
    num_left_chunks: int = SERVE_LEFT_CHUNKS
    beam_size: int = 10
    max_streams: int = 32
    max_latency: float = DEFAULT_MAX_LATENCY  # s; new streams are refused while results are later (0: off)
    max_batch: int = DEFAULT_MAX_BATCH
    threads: int = 0  # CPU threads of each predictor; 0: `predictor_threads` picks
    runtime: str = "auto"  # paddle, onnx, auto (export.runtime.load_backend)
    endpoint: EndpointRules = field(default_factory=EndpointRules)
    drain_seconds: float = 30.0  # after SIGTERM, how long open streams may take to finish
    context_list: str = ""  # hotwords of every stream and request (docs/decoding.md)
    context_score: float = DecodeConfig.context_score

    def check(self) -> None:
        if self.max_streams < 1 or self.max_batch < 1 or self.threads < 0:
            raise AsrError(f"--max_streams ({self.max_streams}) and --max_batch ({self.max_batch}) must be at least "
                           f"1, --threads ({self.threads}) at least 0 (0: half the cores)")
        if not 0 <= self.port <= 65535:
            raise AsrError(f"--port {self.port} is not a TCP port")


def error_reply(message: str) -> dict:
    return {"status": "error", "message": message}


def failed_response(code: int, description: str) -> JSONResponse:
    """PaddleSpeech's error shape (`server.utils.errors.failed_response`), with the HTTP status set
    to the same code so that tools see the failure too."""
    return JSONResponse({"success": False, "code": code, "message": {"description": description}}, status_code=code)


class ASRRequest(BaseModel):
    """PaddleSpeech's `restful.request.ASRRequest`."""
    audio: str
    audio_format: str
    sample_rate: int
    lang: str
    punc: bool | None = None


class Service:
    """What the handlers share: the bundle's model, the inference worker and the stream count."""

    def __init__(self, bundle: Path, options: ServeOptions) -> None:
        options.check()
        self.latency = LatencyGauge(options.max_latency)
        self.stream_cap = StreamCap(options.max_streams, self.latency)
        self.bundle, self.options = Path(bundle), options
        # Offline requests decode whole recordings (full attention); streams use the chunk encoder.
        self.threads = predictor_threads(options.threads)
        self.recognizer = load(self.bundle, beam_size=options.beam_size, num_threads=self.threads,
                               runtime=options.runtime, context_list=options.context_list,
                               context_score=options.context_score)
        self.transcriber = self.recognizer.transcriber
        self.model = self.recognizer.streaming_model(StreamOptions(options.chunk_size, options.num_left_chunks,
                                                                   options.endpoint))
        self.chunk_samples = self.model.stride * self.model.hop  # audio samples a chunk window advances by
        self.worker = InferenceWorker(self.model, max_batch=options.max_batch,
                                      queue_size=options.max_streams + OFFLINE_QUEUE)
        self.open_streams = 0
        self.draining = False

    def health(self) -> dict:
        meta = self.transcriber.meta
        return {"status": "draining" if self.draining else "ok", "bundle": str(self.bundle),
                "model": meta.get("model"), "precision": meta.get("precision", "fp32"),
                "runtime": self.transcriber.runtime,
                "streaming": not self.model.refusal, "streaming_refused": self.model.refusal or None,
                "open_streams": self.open_streams, "max_streams": self.options.max_streams,
                "max_latency": self.options.max_latency, "partial_latency_median": _rounded(self.latency.median()),
                "admitting": not self.admission_refusal(), "stream_cap": self.stream_cap.cap,
                "max_batch": self.options.max_batch, "threads": self.threads, "chunk_size": self.options.chunk_size,
                "num_left_chunks": self.options.num_left_chunks, "sample_rate": self.model.rate,
                "load": self.worker.load()}

    def admission_refusal(self) -> str:
        """Why a new stream cannot start now, or ''."""
        if self.draining:
            return "the server is shutting down and takes no new streams; connect to another instance"
        return self.stream_cap.refusal(self.open_streams)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="paddle-asr serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.post(OFFLINE_PATH)
    async def offline(request: Request) -> JSONResponse:
        return await transcribe_request(service, await request.body())

    @app.websocket(STREAMING_PATH)
    async def streaming(websocket: WebSocket) -> None:
        await StreamConnection(service, websocket).run()

    return app


# ---------------------------------------------------------------------------------------- offline
def parse_offline_request(service: Service, body: bytes):
    """The request's waveform at the model's rate; AsrError with what to fix otherwise."""
    try:
        request = ASRRequest.model_validate(json.loads(body))
    except (ValueError, ValidationError) as e:
        reason = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors()) \
            if isinstance(e, ValidationError) else f"the body is not JSON ({e})"
        raise AsrError(f"bad request: {reason}; send JSON {{\"audio\": base64, \"audio_format\": \"wav\", "
                       f"\"sample_rate\": {service.model.rate}, \"lang\": \"zh_cn\"}}") from None
    try:
        audio = base64.b64decode(request.audio, validate=True)
    except (binascii.Error, ValueError) as e:
        raise AsrError(f"audio is not valid base64 ({e}): send the audio file's bytes base64-encoded") from None
    try:
        waveform, rate = decode_audio(audio)
    except AsrError as e:
        reason = re.sub(r"Error opening <[^>]*>: ", "", str(e))  # libsndfile names the in-memory buffer
        raise AsrError(f"audio is {reason}; send the bytes of a WAV, FLAC, OGG or MP3 file") from None
    if rate != service.model.rate:
        raise AsrError(f"the audio is {rate} Hz but this model takes {service.model.rate} Hz: resample it "
                       f"(e.g. sox in.wav -r {service.model.rate} out.wav)")
    if request.sample_rate != rate:
        raise AsrError(f"sample_rate says {request.sample_rate} but the audio is {rate} Hz: send the file's own rate")
    return waveform


async def transcribe_request(service: Service, body: bytes) -> JSONResponse:
    """POST /paddlespeech/asr: PaddleSpeech's success shape, or its error shape with the reason."""
    try:
        waveform = parse_offline_request(service, body)
        result = await asyncio.wrap_future(service.worker.call(
            lambda: service.transcriber.transcribe_waveform(waveform, key="request")))
    except ServerBusy as e:
        return failed_response(503, str(e))
    except AsrError as e:
        return failed_response(400, str(e))
    except Exception:
        log.exception("offline request failed")
        return failed_response(500, "Internal error: see the server log")
    if result.error:
        return failed_response(400, result.error.replace("request is", "the audio is"))
    return JSONResponse({"success": True, "code": 200, "message": {"description": "success"},
                         "result": {"transcription": result.text}})


# -------------------------------------------------------------------------------------- streaming
class StreamConnection:
    """One WebSocket connection of the `asr_online` protocol; at most one stream at a time."""

    def __init__(self, service: Service, websocket: WebSocket) -> None:
        self.service, self.ws = service, websocket
        self.stream: Stream | None = None

    async def run(self) -> None:
        await self.ws.accept()
        try:
            if self.service.model.refusal:
                await self.ws.send_json(error_reply(self.service.model.refusal))
                await self.ws.close(CLOSE_UNSUPPORTED)
                return
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    await self.on_audio(message["bytes"])
                elif await self.on_text(message.get("text") or ""):
                    await self.ws.close()
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away; its stream is dropped below
        finally:
            self.close_stream(drop=True)

    def close_stream(self, drop: bool) -> None:
        if self.stream is not None:
            if drop:
                self.service.worker.drop(self.stream)
            self.stream = None
            self.service.open_streams -= 1

    async def on_text(self, text: str) -> bool:
        """A control message; True when the connection is to be closed."""
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        signal_ = message.get("signal") if isinstance(message, dict) else None
        if signal_ == "start":
            return await self.on_start()
        if signal_ == "end":
            return await self.on_end()
        await self.ws.send_json(NO_VALID_JSON)
        return False

    async def on_start(self) -> bool:
        if self.stream is not None:
            await self.ws.send_json(error_reply('this connection has already started a stream: send {"signal": '
                                                '"end"} to finish it first'))
            return False
        refusal = self.service.admission_refusal()
        if refusal:
            await self.ws.send_json(error_reply(refusal))
            await self.ws.close(CLOSE_TRY_LATER)
            raise WebSocketDisconnect(CLOSE_TRY_LATER)
        self.stream = self.service.worker.open_stream()
        self.service.open_streams += 1
        await self.ws.send_json(READY)
        return False

    async def on_end(self) -> bool:
        if self.stream is None:
            await self.ws.send_json(error_reply('end without a start: send {"name": ..., "signal": "start", '
                                                '"nbest": 1} before the audio'))
            return False
        try:
            final = await asyncio.wrap_future(self.service.worker.end(self.stream))
        except AsrError as e:
            await self.ws.send_json(error_reply(str(e)))
            return True
        self.close_stream(drop=False)  # the worker has already let it go
        await self.ws.send_json({"status": "ok", "signal": "finished", **final})
        return True

    async def on_audio(self, pcm: bytes) -> None:
        if self.stream is None:
            await self.ws.send_json(error_reply('audio before the start signal: send {"name": ..., "signal": '
                                                '"start", "nbest": 1} first; this frame was ignored'))
            return
        if len(pcm) % 2:
            await self.ws.send_json(error_reply(f"a frame of {len(pcm)} bytes is not whole 16-bit samples "
                                                "(16-bit little-endian mono PCM); this frame was ignored"))
            return
        received = time.monotonic()
        try:
            reply = self.service.worker.audio(self.stream, pcm)
            # Timed: a frame that completed a chunk window, and no more than one chunk's worth of
            # audio (a frame of many seconds is many windows' work, slow however idle the server is).
            timed = not reply.done() and len(pcm) // 2 <= self.service.chunk_samples
            partial = await asyncio.wrap_future(reply)
        except AsrError as e:
            await self.ws.send_json(error_reply(str(e)))
            return
        if timed:
            self.service.latency.record(time.monotonic() - received)
        await self.ws.send_json({"result": partial})


# ----------------------------------------------------------------------------------------- server
def serve(bundle: Path, options: ServeOptions = ServeOptions()) -> int:
    """Run the server until SIGTERM/SIGINT; 0 after a clean shutdown."""
    let_idle_threads_sleep()
    keep_freed_memory_for_reuse()  # each stream's next attention cache (MBs) is a new array every chunk
    _log_to_stderr()
    service = Service(bundle, options)
    service.worker.start()
    # No permessage-deflate, which PaddleSpeech's client (websockets) offers: 16-bit PCM deflates to only
    # 75-89 % of its size (bench/RESULTS.md), and inflating every frame costs the one event loop that
    # every stream shares.
    config = uvicorn.Config(create_app(service), host=options.host, port=options.port, ws="websockets-sansio",
                            ws_per_message_deflate=False, lifespan="off", log_level="info", access_log=False)
    server = DrainingServer(config, service)
    log.info("%s", startup_line(service))
    if service.model.refusal:
        log.warning("%s: %s", STREAMING_PATH, service.model.refusal)
    if options.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the server is reachable from other machines", options.host)
    try:
        server.run()
    finally:
        service.worker.stop()
    return 0


def _log_to_stderr() -> None:
    """The server's own messages beside uvicorn's (Paddle's import may already have set up the root logger)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def startup_line(service: Service) -> str:
    o, h = service.options, service.health()
    return (f"serving {service.bundle} ({h['model']}, {h['precision']}, {h['runtime']}) on http://{o.host}:{o.port}: "
            f"WebSocket {STREAMING_PATH} ({'chunk ' + str(o.chunk_size) if h['streaming'] else 'refused'}), "
            f"POST {OFFLINE_PATH}, GET /health; up to {o.max_streams} streams"
            + (f" while their partial results keep within {o.max_latency:g} s" if o.max_latency else "")
            + f", {o.max_batch} per encoder call, "
            f"{service.threads} thread(s) per predictor"
            + (f"; hotwords {o.context_list} (score {o.context_score})" if o.context_list else ""))


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT lets open streams finish (new ones are refused)
    before the usual shutdown; a second signal, or no open stream, shuts down at once."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service, self.deadline = service, 0.0

    def handle_exit(self, sig: int, frame) -> None:
        # Not uvicorn's handler: it records the signal and raises it again after the shutdown,
        # which would end the process by SIGTERM instead of with status 0.
        if self.service.draining or not self.service.open_streams:
            self.force_exit = self.should_exit
            self.should_exit = self.service.draining = True
            return
        self.service.draining = True
        self.deadline = time.monotonic() + self.service.options.drain_seconds
        log.info("%s: finishing %d open stream(s) (at most %.0f s), taking no new ones",
                 signal.Signals(sig).name, self.service.open_streams, self.service.options.drain_seconds)

    async def on_tick(self, counter: int) -> bool:
        if self.service.draining and (not self.service.open_streams or time.monotonic() > self.deadline):
            self.should_exit = True
        return await super().on_tick(counter)


def serve_from_args(args) -> int:
    """`paddle-asr serve` with its parsed command-line arguments."""
    rules = EndpointRules(silence_without_text=args.endpoint_silence_no_text, silence_after_text=args.endpoint_silence,
                          max_segment=args.max_segment)
    return serve(Path(args.model), ServeOptions(
        host=args.host, port=args.port, chunk_size=args.chunk_size, num_left_chunks=args.num_left_chunks,
        beam_size=args.beam_size, max_streams=args.max_streams, max_latency=args.max_latency,
        max_batch=args.max_batch, threads=args.threads,
        runtime=args.runtime, endpoint=rules, drain_seconds=args.drain_seconds, context_list=args.context_list,
        context_score=args.context_score))
