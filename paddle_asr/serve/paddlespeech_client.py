"""PaddleSpeech 1.5.0's own ASR client, unchanged, driving `paddle-asr serve`; and stage 8 of the recipes.

The client is PaddleSpeech's `ASRWsAudioHandler` (streaming: a start message, 85 ms frames of 16-bit
PCM each answered by a partial result, an end message answered by the final result with unit times)
and `ASRHttpHandler` (offline: one base64 WAV per request), from
`paddlespeech/server/utils/audio_handler.py` of the `paddlespeech==1.5.0` wheel.

Why a loader instead of a plain import: the wheel is installed with `pip install --no-deps`
(requirements-no-deps.txt): its declared dependencies (paddlenlp, ppdiffusers, librosa, onnxruntime,
...) make a multi-GB install, and the client needs none of them: `audio_handler.py` imports websockets,
requests, soundfile, numpy and three small modules of the wheel (`cli/log.py`,
`server/utils/audio_process.py`, `server/utils/util.py`). Importing it the ordinary way would first
run `paddlespeech/cli/__init__.py` and `paddlespeech/server/__init__.py`, which import PaddleSpeech's
whole command line and server (FastAPI, uvicorn, every engine). So `load_client` registers those three
packages by their installed folders without running their `__init__`, and Python then imports the
wheel's own modules, byte for byte, from there.

`run(wav)` logs each reply through PaddleSpeech's logger and returns only the final message; the
partial results are read back from those log records (`client receive msg=...`), per stream, so that
concurrent streams in one event loop keep theirs apart.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextvars
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import requests
from websockets.exceptions import WebSocketException

from paddle_asr.errors import AsrError

PADDLESPEECH_VERSION = "1.5.0"  # the protocol the server speaks; requirements-no-deps.txt pins the wheel
STREAMING_PATH = "/paddlespeech/asr/streaming"
HTTP_PATH = "/paddlespeech/asr"
RECEIVED = "client receive msg="  # how PaddleSpeech's client logs every reply it reads

_log_sink: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("paddlespeech_client_log", default=None)


class _LogCapture(logging.Handler):
    """Hands each PaddleSpeech client log line to the stream (asyncio task) that logged it."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _log_sink.get()
        if sink is not None:
            sink.append(record.getMessage())


def _register_package(name: str, folder: Path) -> None:
    """Make `name` an importable package whose modules are the files in `folder`, without running
    its `__init__.py` (see the module docstring for why)."""
    if name in sys.modules:
        return
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)


def load_client() -> ModuleType:
    """PaddleSpeech's `paddlespeech.server.utils.audio_handler` module, as installed. Its logger's
    per-reply INFO lines are kept off stderr (they are still captured, see `stream_file`)."""
    try:
        version = importlib.metadata.version("paddlespeech")
        import paddlespeech  # its __init__ only sets a locale hook
    except (importlib.metadata.PackageNotFoundError, ImportError):
        raise AsrError("PaddleSpeech's client is not installed in this Python environment: run "
                       "`pip install --no-deps -r requirements-no-deps.txt` (utils/setup_env.sh does it)") from None
    if version != PADDLESPEECH_VERSION:
        raise AsrError(f"paddlespeech {version} is installed; the server speaks PaddleSpeech {PADDLESPEECH_VERSION}'s "
                       "protocol: run `pip install --no-deps -r requirements-no-deps.txt`")
    root = Path(paddlespeech.__file__).parent
    for name in ("cli", "server", "server.utils"):
        _register_package(f"paddlespeech.{name}", root.joinpath(*name.split(".")))
    module = importlib.import_module("paddlespeech.server.utils.audio_handler")
    ps_logger = logging.getLogger("PaddleSpeech")  # the logger of paddlespeech/cli/log.py
    if not any(isinstance(h, _LogCapture) for h in ps_logger.handlers):
        ps_logger.addHandler(_LogCapture())
    for handler in ps_logger.handlers:
        if not isinstance(handler, _LogCapture):
            handler.setLevel(logging.WARNING)
    return module


def _parse_reply(text: str) -> dict | str:
    """A reply as the client logged it: the raw JSON of the first one, the repr of a dict after."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


@dataclass
class StreamResult:
    """What PaddleSpeech's client received for one file."""

    wav: str
    final: dict  # the reply to "end": {"status", "signal": "finished", "result", "times"}
    replies: list = field(default_factory=list)  # every reply before it, in order (start, then one per frame)

    @property
    def text(self) -> str:
        return self.final.get("result", "")

    @property
    def partials(self) -> list[str]:
        """The partial result of each audio frame, in order."""
        return [r["result"] for r in self.replies if isinstance(r, dict) and "result" in r and "signal" not in r]


async def stream_file(host: str, port: int, wav: str) -> StreamResult:
    """One file through PaddleSpeech's ASRWsAudioHandler.run: 85 ms frames, a reply awaited per frame."""
    client = load_client()
    sink: list[str] = []
    _log_sink.set(sink)  # this task's context only: concurrent streams keep their own lines
    handler = client.ASRWsAudioHandler(url=host, port=port, endpoint=STREAMING_PATH)
    final = await handler.run(wav)
    replies = [_parse_reply(line[len(RECEIVED):]) for line in sink if line.startswith(RECEIVED)]
    return StreamResult(wav, final if isinstance(final, dict) else {}, replies)


def stream_files(host: str, port: int, wavs: Sequence[str], *, concurrent: bool = False) -> list[StreamResult]:
    """Files through the streaming endpoint, one after another or all at once (one event loop)."""

    async def run_all() -> list[StreamResult]:
        if concurrent:
            return list(await asyncio.gather(*(stream_file(host, port, str(w)) for w in wavs)))
        return [await stream_file(host, port, str(w)) for w in wavs]

    return asyncio.run(run_all())


def http_transcribe(host: str, port: int, wav: str, *, sample_rate: int = 16000, lang: str = "zh_cn") -> dict:
    """One file through PaddleSpeech's ASRHttpHandler (the offline endpoint); its JSON response."""
    handler = load_client().ASRHttpHandler(server_ip=host, port=port, endpoint=HTTP_PATH)
    return handler.run(str(wav), "wav", sample_rate, lang)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _terminate_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the process that started it dies, so
    a client killed outright (SIGKILL) never leaves a server running."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerFailed(AsrError):
    """The server exited or never answered; the message ends with its log."""


class ServerProcess:
    """`paddle-asr serve` in a child process, its output in a log file: started, checked through
    /health, stopped with SIGTERM (killed if it does not stop)."""

    def __init__(self, bundle: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 args: Sequence[str] = (), log_path: Path | None = None, bind_host: bool = True) -> None:
        self.bundle, self.host, self.port = Path(bundle), host, port or free_port(host)
        self.command = [sys.executable, "-m", "paddle_asr.cli", "serve", "--model", str(bundle),
                        *(["--host", host] if bind_host else []), "--port", str(self.port), *args]
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="paddle-asr-serve-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> dict:
        """Start the server and wait until /health answers; returns the health report."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_terminate_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"paddle-asr serve exited with status {self.proc.returncode} before it answered "
                               f"/health; its log ({self.log_path}) ends:\n{self.log_tail()}")
            try:
                return self.health()
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise ServerFailed(f"paddle-asr serve did not answer {self.url}/health within {timeout:.0f} s; its log "
                       f"({self.log_path}) ends:\n{self.log_tail()}")

    def health(self) -> dict:
        reply = requests.get(f"{self.url}/health", timeout=5)
        reply.raise_for_status()
        return reply.json()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit status (None when it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def read_kaldi_map(path: Path) -> dict[str, str]:
    """`key value...` lines (Kaldi wav.scp / text) -> {key: value}."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out[key] = value.strip()
    return out


def _distinct(texts: Sequence[str]) -> list[str]:
    """Consecutive repeats dropped: how the partial result changed as audio arrived."""
    return [t for i, t in enumerate(texts) if t and (i == 0 or t != texts[i - 1])]


def _print_stream(key: str, reference: str, result: StreamResult) -> None:
    print(f"{key}  reference: {reference}")
    for partial in _distinct(result.partials):
        print(f"{key}  partial:   {partial}")
    times = result.final.get("times") or []
    span = f", {times[0]['bg']:.2f}-{times[-1]['ed']:.2f} s" if times else ""
    print(f"{key}  final:     {result.text}   ({len(times)} timed units{span})", flush=True)


def _check_audio(wavs: list[tuple[str, str]], rate: int = 16000) -> None:
    """PaddleSpeech's client asserts 16 kHz and reads the file itself: say which file is wrong first."""
    import soundfile

    for key, wav in wavs:
        try:
            info = soundfile.info(wav)
        except (RuntimeError, OSError) as e:
            raise AsrError(f"{wav} ({key} in the wav.scp) cannot be read as audio: {e}") from None
        if info.samplerate != rate:
            raise AsrError(f"{wav} ({key}) is {info.samplerate} Hz; PaddleSpeech's client streams {rate} Hz files "
                           "as they are: resample it") from None


def serve_demo(bundle: Path, wav_scp: Path, text: Path, *, num_files: int = 3, server_args: Sequence[str] = (),
               log_path: Path | None = None) -> None:
    """Stage 8: `paddle-asr serve` on `bundle` (127.0.0.1, a free port), the first `num_files` of
    `wav_scp` through PaddleSpeech's client, partials and finals printed beside the reference; a
    bundle that cannot stream goes through the offline HTTP endpoint instead. The server is stopped
    in every case; any failure raises AsrError with the end of the server's log."""
    wavs = list(read_kaldi_map(wav_scp).items())[:num_files]
    if not wavs:
        raise AsrError(f"{wav_scp} lists no audio files")
    _check_audio(wavs)
    references = read_kaldi_map(text)
    load_client()  # fails early, before a server starts, when the client is missing
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(bundle, args=server_args, log_path=log_path)
    try:
        health = server.start()
        streaming = bool(health.get("streaming"))
        print(f"paddle-asr serve {bundle} ({health.get('model')}, {health.get('precision')}) at {server.url}",
              flush=True)
        if streaming:
            print(f"PaddleSpeech {PADDLESPEECH_VERSION}'s ASRWsAudioHandler streams {len(wavs)} test file(s) in 85 ms "
                  f"frames to ws://{server.host}:{server.port}{STREAMING_PATH} (chunk {health.get('chunk_size')})",
                  flush=True)
        else:
            print(f"{bundle} cannot stream ({health.get('streaming_refused') or 'a full-context model'}); the files "
                  f"go through the offline endpoint POST {HTTP_PATH} with PaddleSpeech's ASRHttpHandler", flush=True)
        for key, wav in wavs:
            if streaming:
                (result,) = stream_files(server.host, server.port, [wav])
                if result.final.get("signal") != "finished":
                    raise AsrError(f"{wav}: the server's reply to 'end' was {result.final}, not the final result")
                _print_stream(key, references.get(key, "(none)"), result)
            else:
                reply = http_transcribe(server.host, server.port, wav)
                if not reply.get("success"):
                    raise AsrError(f"{wav}: the offline endpoint answered {reply}")
                print(f"{key}  reference: {references.get(key, '(none)')}\n"
                      f"{key}  offline:   {reply['result']['transcription']}", flush=True)
    except ServerFailed:
        raise
    except (OSError, requests.RequestException, WebSocketException, ValueError, KeyError) as e:
        # The server went away or broke the protocol mid-way (PaddleSpeech's client reads replies as it
        # expects them: a missing key or non-JSON text surfaces here).
        raise ServerFailed(f"talking to paddle-asr serve at {server.url} failed ({type(e).__name__}: {e}); its log "
                           f"({server.log_path}) ends:\n{server.log_tail()}") from None
    except AsrError as e:
        raise ServerFailed(f"{e}\nthe server's log ({server.log_path}) ends:\n{server.log_tail()}") from None
    finally:
        status = server.stop()
    if status not in (0, None):
        raise ServerFailed(f"paddle-asr serve exited with status {status} after SIGTERM; its log ({server.log_path}) "
                       f"ends:\n{server.log_tail()}")
    print(f"server stopped (exit status {status}); its log: {server.log_path}", flush=True)


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through serve_demo's `finally`, which stops the server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paddle_asr.serve.paddlespeech_client",
                                     description=serve_demo.__doc__)
    parser.add_argument("--bundle", required=True, help="exported bundle (e.g. exp/<name>/export/int8)")
    parser.add_argument("--wav_scp", required=True, help="Kaldi wav.scp of the test set")
    parser.add_argument("--text", required=True, help="Kaldi text of the test set (the references)")
    parser.add_argument("--num_files", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="the server's --threads: CPU threads of each predictor (0: half the cores)")
    parser.add_argument("--log", help="the server's log file (default: a new file in the temporary folder)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        serve_demo(Path(args.bundle), Path(args.wav_scp), Path(args.text), num_files=args.num_files,
                   server_args=["--threads", str(args.threads)], log_path=Path(args.log) if args.log else None)
    except AsrError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
