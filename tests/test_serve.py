"""`paddle-asr serve` as a client sees it: a real server process on 127.0.0.1 driven by PaddleSpeech
1.5.0's own client (`ASRWsAudioHandler`, `ASRHttpHandler`, loaded unchanged by
paddle_asr/serve/paddlespeech_client.py), and by raw WebSocket/HTTP requests for the bad input that
client never sends. A small exported streaming U2 bundle with random weights (peaky posteriors, so
the texts are long and change as audio arrives), the tiny demo corpus's test utterances.

The engine itself (incremental fbank, prefix search, endpointing) is tested without the web layer in
test_serve_engine.py. Timings are bench/serve.py's, not these tests'."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from paddle_asr.cpu_settings import predictor_threads
from paddle_asr.data.audio import read_audio_resampled
from paddle_asr.decode.recognizer import encode_streaming
from paddle_asr.decode.search import ctc_prefix_beam_search
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import read_bundle, write_bundle_files
from paddle_asr.export.export import export_model
from paddle_asr.export.runtime import load_backend
from paddle_asr.features import compute_fbank
from paddle_asr.serve.admission import LATENCY_WINDOW
from paddle_asr.serve.app import ServeOptions
from paddle_asr.serve.paddlespeech_client import (
    HTTP_PATH,
    STREAMING_PATH,
    ServerProcess,
    http_transcribe,
    read_kaldi_map,
    serve_demo,
    stream_files,
)
from tests.conftest import REPO
from tests.test_export_deepspeech2 import build_small_ds2
from tests.test_export_deepspeech2 import write_vocab as write_ds2_vocab
from tests.test_export_quant import FEAT_DIM, build_small_u2

CHUNK, BEAM, MAX_STREAMS = 8, 10, 8
# Chunks of attention history on both sides (server and transcribe): bounded, as the server's
# default is, and short enough that the test files run past it.
LEFT = 2
STREAMING = ["--chunk_size", str(CHUNK), "--num_left_chunks", str(LEFT)]
FRAME = 1360  # samples: the 85 ms frame PaddleSpeech's client sends
# Endpointing off: an untrained model's blanks would cut segments where `transcribe` (one segment
# for a short file) does not, and the equality below would test the rules instead of the server.
NO_ENDPOINT = ["--endpoint_silence", "0", "--endpoint_silence_no_text", "0", "--max_segment", "0"]
START = {"name": "test.wav", "signal": "start", "nbest": 1}
END = {"name": "test.wav", "signal": "end", "nbest": 1}


def export_u2(out: Path) -> Path:
    config, model = build_small_u2()
    diffs = export_model(model, FEAT_DIM, out)
    vocab = out.parent / "vocab.txt"
    vocab.write_text("".join(f"{u}\n" for u in ["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(57)] + ["<eos>"]))
    write_bundle_files(out, config, vocab, model, checkpoint="test", functions=sorted(diffs))
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_u2(tmp_path_factory.mktemp("u2") / "fp32")


@pytest.fixture(scope="module")
def wavs(tiny_recipe, tmp_path_factory) -> list[Path]:
    """The demo test utterances, zero-padded to whole 85 ms frames as PaddleSpeech's client pads
    what it sends: the file `transcribe` reads and the stream are then the same samples."""
    out = tmp_path_factory.mktemp("wavs")
    paths = []
    for key, path in sorted(read_kaldi_map(tiny_recipe / "data/test/wav.scp").items())[:MAX_STREAMS]:
        samples, rate = sf.read(tiny_recipe / path, dtype="int16")
        paths.append(out / f"{key}.wav")
        sf.write(paths[-1], np.concatenate([samples, np.zeros(-len(samples) % FRAME, np.int16)]), rate,
                 subtype="PCM_16")
    return paths


def transcribe(bundle: Path, wavs: list[Path], *options: str) -> dict[str, str]:
    """`paddle-asr transcribe` of the files: {file stem: text}."""
    proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "transcribe", "--bundle", str(bundle),
                           "--progress", "off", *options, *map(str, wavs)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = dict((line.split(" ", 1) + [""])[:2] for line in proc.stdout.splitlines())
    assert sorted(texts) == sorted(w.stem for w in wavs), proc.stdout
    return texts


@pytest.fixture(scope="module")
def offline(bundle, wavs) -> dict[str, str]:
    """`paddle-asr transcribe --chunk_size N` of every test file: what a stream's final must be."""
    return transcribe(bundle, wavs, *STREAMING)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """The server every test here shares; no --host: the default bind is under test too."""
    with ServerProcess(bundle, bind_host=False, log_path=tmp_path_factory.mktemp("log") / "serve.log",
                       args=[*STREAMING, "--beam_size", str(BEAM), "--max_streams",
                             str(MAX_STREAMS), "--threads", "1", *NO_ENDPOINT]) as s:
        yield s


def ws_url(server: ServerProcess) -> str:
    return f"ws://{server.host}:{server.port}{STREAMING_PATH}"


def frames_of(wav: Path) -> list[bytes]:
    data = sf.read(wav, dtype="int16")[0].astype("<i2").tobytes()
    return [data[i: i + 2 * FRAME] for i in range(0, len(data), 2 * FRAME)]


def recv_json(ws) -> dict:
    return json.loads(ws.recv(timeout=60))


def stream_raw(ws, frames: list[bytes]) -> list[dict]:
    """Frames on an open, started connection, one reply awaited per frame (as PaddleSpeech's client)."""
    replies = []
    for frame in frames:
        ws.send(frame)
        replies.append(recv_json(ws))
    return replies


def finish(ws) -> dict:
    ws.send(json.dumps(END))
    final = recv_json(ws)
    assert final["signal"] == "finished", final
    return final


def wait_open_streams(server: ServerProcess, expected: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while (health := server.health())["open_streams"] != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health["open_streams"] == expected, health
    return health


def partial_references(bundle: Path, wav: Path) -> tuple[list[str], callable]:
    """What a partial may be: the prefix-beam text of the first j encoder chunks (j = 0, 1, ...), from
    the bundle's chunk encoder run offline; and j_max(samples), the whole chunks those samples fill."""
    meta, features, tokenizer = read_bundle(bundle)
    backend = load_backend(bundle, meta, num_threads=1)
    feats = compute_fbank(read_audio_resampled(wav, features.sample_rate), features)
    log_probs = backend.ctc_activation(encode_streaming(backend, feats, CHUNK, LEFT))[0]
    refs = [tokenizer.decode(ctc_prefix_beam_search(log_probs[: j * CHUNK], BEAM)[0][0])
            for j in range(math.ceil(log_probs.shape[0] / CHUNK) + 1)]
    shift, length = (round(features.sample_rate * ms / 1000) for ms in (features.frame_shift_ms,
                                                                          features.frame_length_ms))
    window = (CHUNK - 1) * backend.subsampling_rate + backend.right_context + 1

    def chunks_filled(samples: int) -> int:
        frames = 1 + (samples - length) // shift if samples >= length else 0
        return (frames - window) // (backend.subsampling_rate * CHUNK) + 1 if frames >= window else 0

    return refs, chunks_filled


def test_paddlespeech_client_streams_to_the_transcribe_result(server, bundle, wavs, offline):
    """Final == `transcribe --chunk_size N`; each partial is the text of the audio received so far
    (the prefix search over the chunks that audio fills, never more, never going back); `times`
    are in order, within the audio, and spell the final text."""
    results = stream_files(server.host, server.port, wavs[:3])
    for wav, result in zip(wavs[:3], results):
        assert result.replies[0] == {"status": "ok", "signal": "server_ready"}
        assert len(result.partials) == len(frames_of(wav)) == len(result.replies) - 1  # one reply per frame
        assert result.final["status"] == "ok" and result.final["signal"] == "finished"
        assert result.text == offline[wav.stem] and result.text, wav
        refs, chunks_filled = partial_references(bundle, wav)
        j = 0
        for k, partial in enumerate(result.partials):
            limit = chunks_filled((k + 1) * FRAME)
            while j <= limit and refs[j] != partial:
                j += 1
            assert j <= limit, f"{wav.name} frame {k}: partial {partial!r} is not the text of the audio so far"
        assert len(set(result.partials)) > 3  # the partials grew with the audio
        times = result.final["times"]
        assert "".join(t["w"] for t in times) == result.text
        duration = sf.info(wav).duration
        assert all(0 <= t["bg"] <= t["ed"] <= duration + 1e-6 for t in times), times
        assert all(a["bg"] <= b["bg"] and a["ed"] <= b["ed"] for a, b in zip(times, times[1:])), times


def test_eight_concurrent_streams_give_the_results_of_eight_sequential_ones(server, wavs, offline):
    """... and /health's load counts the same work for both: every chunk window encoded once, one final
    a stream, and the concurrent streams' windows in fewer encoder calls than windows."""
    loads = [server.health()["load"]]
    sequential = stream_files(server.host, server.port, wavs)
    loads.append(server.health()["load"])
    concurrent = stream_files(server.host, server.port, wavs, concurrent=True)
    loads.append(server.health()["load"])
    assert [r.final for r in concurrent] == [r.final for r in sequential]
    assert [r.text for r in sequential] == [offline[w.stem] for w in wavs]
    assert all(len(r.partials) == len(frames_of(w)) for r, w in zip(concurrent, wavs))
    done = [{k: after[k] - before[k] for k in after} for before, after in zip(loads, loads[1:])]
    assert done[0]["encoder_windows"] == done[1]["encoder_windows"] > len(wavs), done
    assert done[0]["finals"] == done[1]["finals"] == len(wavs), done
    assert done[1]["encoder_calls"] < done[1]["encoder_windows"], done  # batched
    assert all(d["encoder_busy_s"] > 0 and d["final_busy_s"] > 0 for d in done), done


def test_paddlespeech_http_client_gets_the_offline_transcript(server, bundle, wavs):
    full = transcribe(bundle, wavs[:2])  # whole-utterance attention rescoring, as the offline endpoint
    for wav in wavs[:2]:
        reply = http_transcribe(server.host, server.port, str(wav))
        assert reply == {"success": True, "code": 200, "message": {"description": "success"},
                         "result": {"transcription": full[wav.stem]}}


def test_the_readme_client_streams_a_file(server, wavs, offline):
    """The 10-line `websockets` client of README.md's Serving section, run as printed."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", readme.split("## Serving", 1)[1].split("\n## ", 1)[0], flags=re.S)
    code = code.replace('soundfile.read("test.wav"', f'soundfile.read({str(wavs[0])!r}').replace(
        "127.0.0.1:8090", f"{server.host}:{server.port}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0]) == {"status": "ok", "signal": "server_ready"}
    assert len([x for x in lines if x.startswith("partial:")]) == len(frames_of(wavs[0]))
    assert lines[-1] == f"final: {offline[wavs[0].stem]}"


@pytest.fixture
def other_stream(server, wavs, offline):
    """A stream half-way through while a test misbehaves on another connection; afterwards it must
    finish with its normal result (the server kept serving it)."""
    frames = frames_of(wavs[0])
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(START))
        assert recv_json(ws)["signal"] == "server_ready"
        stream_raw(ws, frames[: len(frames) // 2])
        yield
        stream_raw(ws, frames[len(frames) // 2:])
        assert finish(ws)["result"] == offline[wavs[0].stem]
    wait_open_streams(server, 0)


def test_audio_before_start_and_end_without_start_are_answered_and_the_connection_recovers(
        server, wavs, offline, other_stream):
    frames = frames_of(wavs[1])
    with connect(ws_url(server)) as ws:
        ws.send(frames[0])
        reply = recv_json(ws)
        assert reply["status"] == "error" and "before the start signal" in reply["message"], reply
        ws.send(json.dumps(END))
        reply = recv_json(ws)
        assert reply["status"] == "error" and "end without a start" in reply["message"], reply
        ws.send(json.dumps(START))  # the same connection then streams normally
        assert recv_json(ws)["signal"] == "server_ready"
        stream_raw(ws, frames)
        assert finish(ws)["result"] == offline[wavs[1].stem]


def test_a_frame_of_odd_bytes_is_refused_and_the_stream_goes_on(server, wavs, offline, other_stream):
    frames = frames_of(wavs[1])
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(START))
        recv_json(ws)
        stream_raw(ws, frames[:3])
        ws.send(frames[3][:-1])  # 2719 bytes: half a sample short
        reply = recv_json(ws)
        assert reply["status"] == "error" and "not whole 16-bit samples" in reply["message"], reply
        stream_raw(ws, frames[3:])  # the odd frame was ignored: the rest gives the file's result
        assert finish(ws)["result"] == offline[wavs[1].stem]


def test_frames_travel_uncompressed_though_the_client_offers_deflate(server, wavs, offline):
    """websockets' client (PaddleSpeech's) offers permessage-deflate; the server declines it and streams."""
    with connect(ws_url(server)) as ws:
        assert ws.request.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send(json.dumps(START))
        assert recv_json(ws)["signal"] == "server_ready"
        stream_raw(ws, frames_of(wavs[0]))
        assert finish(ws)["result"] == offline[wavs[0].stem]


@pytest.mark.parametrize("text", ["not json", "{\"signal\": ", "[1, 2]", "{\"name\": \"x\"}"])
def test_text_that_is_not_a_message_gets_paddlespeechs_reply(server, text, other_stream):
    with connect(ws_url(server)) as ws:
        ws.send(text)
        assert recv_json(ws) == {"status": "ok", "message": "no valid json data"}


def test_streams_over_max_streams_are_refused_and_the_others_go_on(server, wavs, offline):
    conns = [connect(ws_url(server)) for _ in range(MAX_STREAMS)]
    try:
        for ws in conns:
            ws.send(json.dumps(START))
            assert recv_json(ws)["signal"] == "server_ready"
        assert server.health()["open_streams"] == MAX_STREAMS
        with connect(ws_url(server)) as extra:
            extra.send(json.dumps(START))
            reply = recv_json(extra)
            assert reply["status"] == "error", reply
            assert f"maximum of {MAX_STREAMS} streams (--max_streams)" in reply["message"], reply
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=30)
            assert closed.value.rcvd.code == 1013  # try again later
        for ws, wav in zip(conns[:2], wavs):
            stream_raw(ws, frames_of(wav))
            assert finish(ws)["result"] == offline[wav.stem]
    finally:
        for ws in conns:
            ws.close()
    wait_open_streams(server, 0)


def test_streams_are_refused_while_partial_results_are_late_and_the_open_one_goes_on(bundle, wavs, offline,
                                                                                      tmp_path):
    """--max_latency: with a bound no reply can meet, the open stream's first timed partial results
    close the server to new streams (1013, with the reason) and hold its stream cap at the one open
    stream; that stream is served to its normal final result, and once its late replies are older than
    the gauge's window the cap grows by one and new streams start."""
    wav = max(wavs, key=lambda w: len(frames_of(w)))
    frames = frames_of(wav)
    with ServerProcess(bundle, log_path=tmp_path / "serve.log",
                       args=[*STREAMING, *NO_ENDPOINT, "--max_latency", "0.000001"]) as srv:
        assert srv.health()["admitting"] is True and srv.health()["partial_latency_median"] is None
        with connect(ws_url(srv)) as ws:
            ws.send(json.dumps(START))
            assert recv_json(ws)["signal"] == "server_ready"
            stream_raw(ws, frames)
            health = srv.health()
            assert health["admitting"] is False and health["partial_latency_median"] > 0, health
            with connect(ws_url(srv)) as late:
                late.send(json.dumps(START))
                reply = recv_json(late)
                assert reply["status"] == "error" and "behind real time" in reply["message"], reply
                assert "(--max_latency 1e-06 s); retry later" in reply["message"], reply
                with pytest.raises(ConnectionClosed) as closed:
                    late.recv(timeout=30)
                assert closed.value.rcvd.code == 1013
            assert finish(ws)["result"] == offline[wav.stem]
        time.sleep(LATENCY_WINDOW + 0.2)
        health = srv.health()
        assert health["admitting"] is True and health["stream_cap"] == 2, health  # 1 open when late, then one more
        with connect(ws_url(srv)) as again:
            again.send(json.dumps(START))
            assert recv_json(again)["signal"] == "server_ready"


def disconnect_mid_stream(server: ServerProcess, frames: list[bytes], abrupt: bool) -> None:
    ws = connect(ws_url(server))
    ws.send(json.dumps(START))
    recv_json(ws)
    stream_raw(ws, frames[:3])
    # Then the rest of the file, twice, in one frame whose reply is still owed when the client goes:
    # a stream the server failed to drop would keep its audio's fbank frames and encoder output.
    ws.send(b"".join(frames[3:]) * 2)
    if abrupt:
        ws.socket.close()  # no close handshake: the server sees the connection drop
    else:
        ws.close()


def drop_streams(server: ServerProcess, frames: list[bytes], count: int) -> None:
    """`count` clients that go mid-stream, half with a close handshake and half without; in groups
    of 5, each waited out, so that `--max_streams` is not what the test meets."""
    for i in range(count):
        disconnect_mid_stream(server, frames, abrupt=i % 2 == 0)
        if i % 5 == 4:
            wait_open_streams(server, 1)  # only `other_stream`


def test_clients_that_disconnect_mid_stream_leave_no_stream_and_no_memory(server, wavs, other_stream):
    frames = frames_of(wavs[2])
    process = psutil.Process(server.proc.pid)
    # Warm-up: the batch sizes and cache lengths the measured part meets get their kernels and
    # allocator pools first (a few MB, once).
    stream_files(server.host, server.port, wavs[: MAX_STREAMS - 1], concurrent=True)
    drop_streams(server, frames, 100)
    before = process.memory_info().rss
    drop_streams(server, frames, 200)
    grown = process.memory_info().rss - before
    # A leaked stream would keep the fbank frames of its last frame (5 s of audio: ~170 kB) or the
    # encoder output, CTC log-probs and search state made from them (~70 kB): 200 would add 14 MB or
    # more. A correct server grew 2.6 MB here (and 5 MB with a shorter warm-up) while oneDNN fills its
    # per-shape kernel cache (bounded: 32 shapes per program) and the allocator settles.
    assert grown < 10 * 2**20, f"server RSS grew {grown / 2**20:.1f} MB over 200 dropped streams"


def post_audio(server: ServerProcess, audio: str, sample_rate: int = 16000) -> requests.Response:
    body = {"audio": audio, "audio_format": "wav", "sample_rate": sample_rate, "lang": "zh_cn", "punc": False}
    return requests.post(f"{server.url}{HTTP_PATH}", data=json.dumps(body), timeout=60)


def test_bad_http_requests_get_paddlespeechs_error_shape_with_a_reason(server, wavs, tmp_path, other_stream):
    corrupt = post_audio(server, "this is %% not base64")
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("meeting notes, not a recording\n" * 50)
    samples = sf.read(wavs[1], dtype="int16")[0][::2]
    narrowband = tmp_path / "8k.wav"
    sf.write(narrowband, samples, 8000, subtype="PCM_16")
    replies = {"corrupt base64": (corrupt.status_code, corrupt.json()),
               "not audio": (400, http_transcribe(server.host, server.port, str(not_audio))),
               "8 kHz": (400, http_transcribe(server.host, server.port, str(narrowband), sample_rate=8000))}
    reasons = {"corrupt base64": "not valid base64", "not audio": "send the bytes of a WAV",
               "8 kHz": "8000 Hz but this model takes 16000 Hz"}
    for what, (status, reply) in replies.items():
        assert status == 400 and reply["success"] is False and reply["code"] == 400, (what, reply)
        assert reasons[what] in reply["message"]["description"], (what, reply)
    assert post_audio(server, base64.b64encode(wavs[1].read_bytes()).decode()).json()["success"]


def test_the_server_listens_on_the_loopback_only_by_default(server):
    listening = [c.laddr for c in psutil.Process(server.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" and addr.port == server.port for addr in listening), listening
    assert "--host" not in server.command


def test_sigterm_lets_open_streams_finish_then_exits_0(bundle, wavs, offline, tmp_path):
    frames = frames_of(wavs[0])
    srv = ServerProcess(bundle, log_path=tmp_path / "serve.log", args=[*STREAMING, *NO_ENDPOINT])
    srv.start()
    try:
        with connect(ws_url(srv)) as ws:
            ws.send(json.dumps(START))
            recv_json(ws)
            stream_raw(ws, frames[:5])
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while srv.health()["status"] != "draining" and time.monotonic() < deadline:
                time.sleep(0.05)
            with connect(ws_url(srv)) as late:  # no new streams while draining
                late.send(json.dumps(START))
                assert "shutting down" in recv_json(late)["message"]
            replies = stream_raw(ws, frames[5:])
            assert all("result" in r for r in replies), replies
            assert finish(ws)["result"] == offline[wavs[0].stem]
        assert srv.proc.wait(60) == 0, srv.log_tail()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def offline_bundle(tmp_path_factory) -> Path:
    """A model that cannot stream: DeepSpeech2 with bidirectional RNNs."""
    config, model = build_small_ds2("bidirect", False)
    out = tmp_path_factory.mktemp("ds2") / "fp32"
    diffs = export_model(model, config.input_dim, out)
    write_bundle_files(out, config, write_ds2_vocab(out.parent / "vocab.txt"), model, checkpoint="test",
                       functions=sorted(diffs))
    return out


def write_test_set(folder: Path, wavs: list[Path]) -> tuple[Path, Path]:
    scp, text = folder / "wav.scp", folder / "text"
    scp.write_text("".join(f"{w.stem} {w}\n" for w in wavs))
    text.write_text("".join(f"{w.stem} 参考文本{i}\n" for i, w in enumerate(wavs)), encoding="utf-8")
    return scp, text


def test_stage_8_streams_test_files_and_stops_the_server(bundle, wavs, offline, tmp_path, capsys):
    scp, text = write_test_set(tmp_path, wavs[:2])
    serve_demo(bundle, scp, text, num_files=2, server_args=[*STREAMING, *NO_ENDPOINT],
               log_path=tmp_path / "serve.log")
    out = capsys.readouterr().out
    for i, wav in enumerate(wavs[:2]):
        assert f"{wav.stem}  reference: 参考文本{i}\n" in out
        assert f"{wav.stem}  final:     {offline[wav.stem]}   (" in out
        assert f"{wav.stem}  partial:   " in out
    assert "server stopped (exit status 0)" in out


def test_a_model_that_cannot_stream_is_refused_on_websocket_and_served_over_http(offline_bundle, wavs, tmp_path,
                                                                                capsys):
    full = transcribe(offline_bundle, wavs[:1])
    with ServerProcess(offline_bundle, log_path=tmp_path / "serve.log") as srv:
        health = srv.health()
        assert health["streaming"] is False and "cannot stream" in health["streaming_refused"]
        assert health["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # no --threads: half the cores
        with connect(ws_url(srv)) as ws:
            reply = recv_json(ws)
            assert reply["status"] == "error" and "cannot stream" in reply["message"], reply
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1003
        assert http_transcribe(srv.host, srv.port, str(wavs[0]))["result"]["transcription"] == full[wavs[0].stem]
    scp, text = write_test_set(tmp_path, wavs[:1])
    serve_demo(offline_bundle, scp, text, num_files=1, log_path=tmp_path / "stage8.log")  # via HTTP
    out = capsys.readouterr().out
    assert "cannot stream" in out and f"{wavs[0].stem}  offline:   {full[wavs[0].stem]}\n" in out


def test_a_server_that_cannot_start_is_reported_with_its_log(bundle, tmp_path):
    """What stage 8 prints when the server dies at start-up: the exit status and the log's end."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        srv = ServerProcess(bundle, port=taken.getsockname()[1], log_path=tmp_path / "serve.log")
        with pytest.raises(AsrError, match=r"(?s)exited with status \d+ before it answered /health.*already in use"):
            srv.start()


def test_each_predictor_gets_half_the_cores_unless_told():
    # The chunk program and the decoder run at the same time, on two threads of the server.
    assert predictor_threads(0) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert predictor_threads(3) == 3
    with pytest.raises(AsrError, match=r"--threads \(-1\) at least 0"):
        ServeOptions(threads=-1).check()
