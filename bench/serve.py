"""Streams per CPU of `paddle-asr serve`: K real-time clients against one server, with the streams'
chunks batched (the server's default --max_batch) and one stream at a time (--max_batch 1), FP32
and INT8, on Paddle Inference and ONNX Runtime, in the same run.

The model is the AISHELL-size streaming Conformer (`recipes/aishell/conf/chunk_conformer.yaml`,
4233 units) with random weights (timing does not depend on them), exported once to
exp/bench/serve/fp32 and quantized to exp/bench/serve/int8 (stage 6, calibrated on the fixture
recordings), with the ONNX exports of both beside them (onnx, onnx_int8: stages 4 and 6) for
`--runtime onnx`. The Paddle INT8 bundle quantizes the encoder (stage 6's default); the ONNX INT8
export the decoder too (`--int8_functions encoder,decoder`), which halves ONNX Runtime's finals.
The server runs on 127.0.0.1 in a process of its own; each client streams a real
recording as PaddleSpeech's client does: 85 ms frames of 16-bit PCM, each sent when its audio would
have been spoken (real time) and answered by a partial result before the next, then the end signal,
answered by the final result. Two loads (--load):
  steady (default)  each client streams --utterances utterances of --seconds s back to back, each on
                    a new connection started as soon as the previous final arrived; client i starts
                    i/K of one utterance after the first, so streams start and end spread over time,
                    as in a load test of a streaming ASR service (K streams open at any moment
                    after the first utterance).
  burst             each client streams one utterance; all start at random moments within the first
                    second, so their K finals are all asked for within about one second.
Per K it reports the partial-reply latency (frame sent -> reply) p50/p95 over every frame of every
utterance, the final latency (end sent -> finished) p50/max over every utterance, the server's CPU use
(cores), the share of the run its chunk encoder and final-result threads computed and the windows
per encoder call (GET /health's `load`), its peak RSS, and the starts it refused (the server is
started with --max_streams the largest K and --max_latency as given: a refused client retries after
0.5-1.5 s). A configuration keeps up with K streams when the p95 partial latency is <= 200 ms, every final
<= 500 ms and no start was refused; K grows until it does not.
    python bench/serve.py [--load steady|burst] [--streams 1,2,4,8,12,16,20,24,28,32,40,48] [--precisions fp32,int8]
                          [--runtimes paddle,onnx] [--max_latency 0.5]
                          [--seconds 10] [--utterances 3]
Prints one JSON line per (precision, mode, K), then a table naming the CPU and the load.
`--tick_costs` times the worker's batched tick per batch size instead (no server, no clients).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import avx2_only  # noqa: E402
from inputs import AISHELL_UNITS  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
WAVS = [FIXTURES / "aishell-BAC009S0724W0121.wav", FIXTURES / "librispeech-1995-1837-0001.wav"]
FRAME_S = 0.085  # PaddleSpeech's client frame
PARTIAL_BOUND_S, FINAL_BOUND_S = 0.200, 0.500
MODES = {"batched": None, "one at a time": 1}  # --max_batch (None: the server's default)


def cpu_description() -> str:
    """The CPU (paddle_asr.devices), the core count and whether it has AVX-512 VNNI / AVX2 (or is held to AVX2)."""
    from paddle_asr.devices import cpu_flags, cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores ({avx2_only.describe(cpu_flags())})"


# ------------------------------------------------------------------------------------ bundles
def prepare(work: Path, log) -> None:
    """exp/bench/serve/fp32 (export of the random-weight model) and int8 (stage 6), made once."""
    import paddle

    from paddle_asr.artifacts import fingerprint, mark_complete
    from paddle_asr.config import load_config
    from paddle_asr.export.bundle import write_bundle_files
    from paddle_asr.export.calibrate import quantize_bundle
    from paddle_asr.export.export import export_model
    from paddle_asr.models.registry import build_model

    fp32, int8 = work / "fp32", work / "int8"
    if not (fp32 / ".done").is_file():
        log(f"exporting the random-weight AISHELL chunk_conformer to {fp32}")
        paddle.seed(0)
        config = load_config(ROOT / "recipes/aishell/conf/chunk_conformer.yaml")
        config = dataclasses.replace(config, vocab_size=AISHELL_UNITS, input_dim=config.features.num_mel_bins)
        model = build_model(config)
        model.eval()
        emit_like_a_trained_model(model, config)
        units = ["<blank>", "<unk>"] + [chr(0x4E00 + i) for i in range(AISHELL_UNITS - 3)] + ["<eos>"]
        vocab = work / "vocab.txt"
        work.mkdir(parents=True, exist_ok=True)
        vocab.write_text("".join(f"{u}\n" for u in units), encoding="utf-8")
        diffs = export_model(model, config.input_dim, fp32)
        write_bundle_files(fp32, config, vocab, model, checkpoint="random weights", functions=sorted(diffs))
        mark_complete(fp32, fingerprint("bench-serve-random-weights"))  # stage 6 reads this record
    if not (int8 / "meta.json").is_file():
        import soundfile

        text = "".join(chr(0x4E00 + i) for i in range(8))  # any units: only the encoder is calibrated
        lines = [{"key": w.stem, "wav": str(w), "duration": soundfile.info(str(w)).duration, "text": text}
                 for w in WAVS]
        manifest = work / "calib.list"
        manifest.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
        quantize_bundle(fp32, int8, manifest, num_calib=len(WAVS), batch_size=1, log=log)
    prepare_onnx(work, log)


# What the ONNX INT8 export quantizes. Its dynamic INT8 MatMuls build nothing per shape, so the
# decoder gains as the encoder does: a final's rescoring (10 hypotheses of ~80 units, 10 s of audio)
# 154 -> 73 ms on the VNNI Xeon of bench/RESULTS.md.
ONNX_INT8_FUNCTIONS = "encoder,decoder"


def prepare_onnx(work: Path, log) -> None:
    """exp/bench/serve/onnx and onnx_int8: stage 4's ONNX export and stage 6's ONNX INT8 export of
    the bundles, for --runtime onnx."""
    from paddle_asr.export.onnx import export_onnx
    from paddle_asr.export.onnx_backend import is_onnx_export
    from paddle_asr.stages import onnx_int8_stage

    if not is_onnx_export(work / "onnx"):
        log(f"converting {work / 'fp32'} to ONNX")
        export_onnx(work / "fp32", work / "onnx")
    onnx_int8_stage(work / "fp32", work / "int8", ONNX_INT8_FUNCTIONS, work / "calib.list", num_calib=len(WAVS),
                    batch_size=1, log=log)


def emit_like_a_trained_model(model, config, speech_share: float = 0.1) -> None:
    """Make the CTC posteriors peaky and raise the blank's bias so that a non-blank unit wins in
    `speech_share` of the frames of the fixture recordings (a trained Mandarin model emits ~4
    characters a second, 1 encoder frame in 6): with raw random weights the posteriors are flat and
    the prefix search emits a unit nearly every other frame, so the search, the rescoring and the
    alignment, whose costs grow with the hypotheses' length, would be timed on hypotheses several
    times too long."""
    import paddle
    import soundfile

    from paddle_asr.features import compute_fbank

    ctc_lo = model.ctc.ctc_lo
    ctc_lo.weight.set_value(ctc_lo.weight.numpy() * 8)  # peaky posteriors, as after training
    margins = []
    for wav in WAVS:
        feats = compute_fbank(soundfile.read(str(wav), dtype="int16")[0], config.features)
        with paddle.no_grad():  # chunk masks: the encoder output the server's streams see
            enc, _ = model.encoder(paddle.to_tensor(feats[None]), paddle.to_tensor([len(feats)], dtype="int64"),
                                   decoding_chunk_size=16, num_decoding_left_chunks=8)
            lp = model.ctc_activation(enc).numpy()[0]
        margins.append(lp[:, 1:].max(axis=1) - lp[:, 0])
    bias = ctc_lo.bias
    shifted = bias.numpy()
    shifted[0] += float(np.quantile(np.concatenate(margins), 1.0 - speech_share))
    bias.set_value(shifted)


# ------------------------------------------------------------------------------------- server
class Server:
    """`paddle-asr serve` in a process of its own; its CPU time and RSS sampled while clients run."""

    def __init__(self, bundle: Path, port: int, options: list[str]) -> None:
        cmd = [sys.executable, "-m", "paddle_asr.cli", "serve", "--model", str(bundle), "--port", str(port), *options]
        self.port, self.log = port, open(bundle.parent / f"server_{port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:
                self.health = self.read_health(timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start; see {self.log.name}") from None
                time.sleep(0.5)
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def read_health(self, timeout: float = 10) -> dict:
        return json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=timeout))

    def load(self) -> dict:
        """/health's counters of the worker's threads."""
        return self.read_health()["load"]

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


# ------------------------------------------------------------------------------------ clients
def load_audio(seconds: float) -> bytes:
    """The fixture recordings one after the other, repeated to `seconds`, as 16-bit PCM."""
    import soundfile

    parts = [soundfile.read(str(w), dtype="int16")[0] for w in WAVS]
    audio = np.concatenate(parts * (1 + int(seconds // (sum(len(p) for p in parts) / 16000))))
    return audio[: int(seconds * 16000)].astype("<i2").tobytes()


# A refused start (1013: --max_streams, --max_latency) is tried again after 0.5-1.5 s (random, so that
# the refused clients do not all come back, and later end, at the same moment).
RETRY_S, MAX_TRIES = (0.5, 1.5), 10


async def client(port: int, pcm: bytes, delay: float, utterances: int = 1) -> dict:
    """One real-time client streaming `utterances` utterances back to back, each on its own connection:
    frame latencies, final latencies, refused starts (each retried after RETRY_S, as the server's
    reply asks), and whether every reply was right."""
    await asyncio.sleep(delay)
    latencies, finals, ok, refused = [], [], True, 0
    for _ in range(utterances):
        for _ in range(MAX_TRIES):
            one = await stream_utterance(port, pcm)
            if not one.get("refused"):
                break
            refused += 1
            await asyncio.sleep(random.uniform(*RETRY_S))
        else:
            return {"latencies": latencies, "finals": finals, "ok": False, "refused": refused}
        latencies += one["latencies"]
        finals.append(one["final"])
        ok &= one["ok"]
    return {"latencies": latencies, "finals": finals, "ok": ok, "refused": refused}


async def stream_utterance(port: int, pcm: bytes) -> dict:
    import websockets

    frame = int(FRAME_S * 16000) * 2
    latencies, ok = [], True
    async with websockets.connect(f"ws://127.0.0.1:{port}/paddlespeech/asr/streaming", max_size=None) as ws:
        await ws.send(json.dumps({"name": "bench.wav", "signal": "start", "nbest": 1}))
        if json.loads(await ws.recv()).get("signal") != "server_ready":
            return {"refused": True}
        start = time.perf_counter()
        for i in range(0, len(pcm), frame):
            await asyncio.sleep(max(0.0, start + (i // frame) * FRAME_S - time.perf_counter()))
            sent = time.perf_counter()
            await ws.send(pcm[i: i + frame])
            ok &= "result" in json.loads(await ws.recv())
            latencies.append(time.perf_counter() - sent)
        sent = time.perf_counter()
        await ws.send(json.dumps({"name": "bench.wav", "signal": "end", "nbest": 1}))
        ok &= json.loads(await ws.recv()).get("signal") == "finished"
        return {"latencies": latencies, "final": time.perf_counter() - sent, "ok": ok}


async def sample(server: Server, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], server.rss_mb())
        await asyncio.sleep(0.2)


def start_delays(k: int, load: str, pcm: bytes, seed: int) -> list[float]:
    """When each client starts (s): steady, evenly over one utterance; burst, at random within 1 s."""
    if load == "steady":
        return [i * len(pcm) / 2 / 16000 / k for i in range(k)]
    rng = random.Random(seed)
    return [rng.uniform(0, 1.0) for _ in range(k)]


async def run_clients(server: Server, k: int, pcm: bytes, seed: int, load: str = "burst", utterances: int = 1
                      ) -> dict:
    peak, stop = [server.rss_mb()], asyncio.Event()
    sampler = asyncio.create_task(sample(server, peak, stop))
    load0, cpu0, t0 = server.load(), server.cpu_seconds(), time.perf_counter()
    results = await asyncio.gather(*(client(server.port, pcm, delay, utterances)
                                     for delay in start_delays(k, load, pcm, seed)), return_exceptions=True)
    wall, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    work = {key: v - load0[key] for key, v in server.load().items()}
    stop.set()
    await sampler
    failed = [r for r in results if isinstance(r, BaseException) or not r["ok"]]
    done = [r for r in results if not isinstance(r, BaseException)]
    lat = sorted(x for r in done for x in r["latencies"]) or [float("inf")]
    finals = sorted(x for r in done for x in r["finals"]) or [float("inf")]
    return {"p50_partial_ms": 1000 * statistics.median(lat), "p95_partial_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
            "p50_final_ms": 1000 * statistics.median(finals), "max_final_ms": 1000 * finals[-1],
            "cpu_cores": cpu / wall, "peak_rss_mb": peak[0], "failed_streams": len(failed),
            "refused_starts": sum(r["refused"] for r in done),
            # The server's own counters: how busy its chunk encoder and final-result threads were.
            "encoder_busy": work["encoder_busy_s"] / wall, "final_busy": work["final_busy_s"] / wall,
            "windows_per_call": work["encoder_windows"] / max(1, work["encoder_calls"])}


def keeps_up(row: dict) -> bool:
    return (not row["failed_streams"] and not row["refused_starts"]
            and row["p95_partial_ms"] <= 1000 * PARTIAL_BOUND_S
            and row["max_final_ms"] <= 1000 * FINAL_BOUND_S)


# -------------------------------------------------------------------------------------- driver
def sweep(bundle: Path, precision: str, runtime: str, mode: str, args, pcm: bytes) -> list[dict]:
    """K = each of --streams until the server no longer keeps up (that K is reported too)."""
    ks = [int(k) for k in args.streams.split(",")]
    max_batch = ["--max_batch", str(MODES[mode])] if MODES[mode] else []
    server = Server(bundle, args.port, ["--runtime", runtime, *max_batch,
                                        "--max_streams", str(max(ks)), "--max_latency", str(args.max_latency),
                                        "--threads", str(args.threads), "--chunk_size", str(args.chunk_size),
                                        "--num_left_chunks", str(args.num_left_chunks)])
    rows = []
    try:
        # Warm-up: one stream long enough for its attention cache to reach its bound, so that oneDNN
        # has built the kernels of every cache length before the timed runs.
        asyncio.run(run_clients(server, 1, pcm, seed=0))
        utterances = args.utterances if args.load == "steady" else 1
        for k in ks:
            row = {"bench": "serve", "load": args.load, "precision": precision, "runtime": runtime, "mode": mode,
                   "streams": k,
                   "audio_s": args.seconds, "utterances": utterances,
                   **asyncio.run(run_clients(server, k, pcm, seed=k, load=args.load, utterances=utterances))}
            row["keeps_up"] = keeps_up(row)
            print(json.dumps({key: round(v, 1) if isinstance(v, float) else v for key, v in row.items()}), flush=True)
            rows.append(row)
            if not row["keeps_up"]:
                break
    finally:
        server.stop()
    return rows


def table(rows: list[dict], cpu: str, int8_functions: list[str], args) -> str:
    lines = [f"CPU: {cpu}; INT8 bundle quantizes {', '.join(int8_functions) or 'nothing'}, its ONNX export "
             f"{ONNX_INT8_FUNCTIONS.replace(',', ', ')}; "
             f"chunk {args.chunk_size}, {args.num_left_chunks} left chunks, {args.threads} threads, "
             f"--max_latency {args.max_latency:g}, "
             f"{args.seconds:.0f} s of audio per utterance; load: {load_description(args)}",
             "", "| precision | runtime | mode | K | p50 / p95 partial (ms) | p50 / max final (ms) | CPU (cores) | "
             "encoder / finals busy | windows a call | peak RSS (MB) | refused starts | keeps up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['runtime']} | {r['mode']} | {r['streams']} | "
                     f"{r['p50_partial_ms']:.0f} / {r['p95_partial_ms']:.0f} | "
                     f"{r['p50_final_ms']:.0f} / {r['max_final_ms']:.0f} | {r['cpu_cores']:.2f} | "
                     f"{r['encoder_busy']:.2f} / {r['final_busy']:.2f} | {r['windows_per_call']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['refused_starts']} | {'yes' if r['keeps_up'] else 'no'} |")
    lines.append("")
    for engine in dict.fromkeys((r["precision"], r["runtime"]) for r in rows):
        best = {m: max([r["streams"] for r in rows if (r["precision"], r["runtime"]) == engine and r["mode"] == m
                        and r["keeps_up"]] or [0]) for m in MODES}
        ratio = f"{best['batched'] / best['one at a time']:.1f}x" if best["one at a time"] else "n/a"
        lines.append(f"{' on '.join(engine)}: {best['batched']} real-time streams batched, "
                     f"{best['one at a time']} one at a time ({ratio}), p95 partial <= "
                     f"{PARTIAL_BOUND_S * 1000:.0f} ms, final <= {FINAL_BOUND_S * 1000:.0f} ms")
    return "\n".join(lines)


TICK_BATCHES = (1, 2, 4, 8, 12, 16, 20)


def tick_costs(bundle: Path, precision: str, runtime: str, args, pcm: bytes) -> list[dict]:
    """One tick of the worker per batch size (`StreamingModel.encode`: the encoder chunk program and
    CTC activation on B windows at once, then each stream's prefix-beam step), timed in this process
    on full windows of the fixture recordings once the attention cache is full (`--num_left_chunks`
    chunks): what B streams' chunks cost, without the server around them (median of 6 ticks)."""
    from paddle_asr.features import compute_fbank
    from paddle_asr.serve.engine import StreamingModel, StreamOptions, Window
    from paddle_asr.transcribe import TranscribeOptions, Transcriber

    options = StreamOptions(chunk_size=args.chunk_size, num_left_chunks=args.num_left_chunks)
    model = StreamingModel(Transcriber(bundle, TranscribeOptions(num_threads=args.threads, runtime=runtime)), options)
    fbank = compute_fbank(np.frombuffer(pcm, dtype="<i2"), model.features)
    window_ms = round(model.stride * model.features.frame_shift_ms)
    rows = []
    for batch in TICK_BATCHES:
        sessions = [model.new_session() for _ in range(batch)]
        times = []
        for k in range(args.num_left_chunks + 6):
            start = (k * model.stride) % max(1, len(fbank) - model.window)
            for s in sessions:
                s.pending.append(Window(start, fbank[start: start + model.window]))
            t0 = time.perf_counter()
            model.encode(sessions, batch)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times[args.num_left_chunks:]) * 1000
        rows.append({"bench": "serve_tick", "precision": precision, "runtime": runtime, "batch": batch,
                     "window_ms": window_ms,
                     "tick_ms": round(ms, 1), "ms_per_window": round(ms / batch, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def tick_table(rows: list[dict], cpu: str, args) -> str:
    lines = [f"CPU: {cpu}; chunk {args.chunk_size} ({rows[0]['window_ms']} ms of audio a window), "
             f"{args.num_left_chunks} left chunks, {args.threads} threads", "",
             "| precision | runtime | batch | tick (ms) | ms per window |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['precision']} | {r['runtime']} | {r['batch']} | {r['tick_ms']} | {r['ms_per_window']} |"
              for r in rows]
    return "\n".join(lines)


def load_description(args) -> str:
    if args.load == "steady":
        return (f"steady, each client {args.utterances} utterances back to back (a new connection each), "
                f"client starts spread evenly over one utterance")
    return "burst, one utterance per client, all started within 1 s (finals within about 1 s)"


def engines(args) -> list[tuple[str, str]]:
    """(precision, runtime) pairs of --precisions and --runtimes."""
    return [(p, r) for p in args.precisions.split(",") for r in args.runtimes.split(",")]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,2,4,8,12,16,20,24,28,32,40,48", help="K values, increasing")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--runtimes", default="paddle,onnx", help="the server's --runtime: paddle (Paddle Inference), "
                    "onnx (ONNX Runtime on the bundle's ONNX export)")
    ap.add_argument("--load", choices=("steady", "burst"), default="steady", help="see the module docstring")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    ap.add_argument("--utterances", type=int, default=3, help="utterances per client (steady load)")
    ap.add_argument("--threads", type=int, default=0, help="the server's --threads (0: its default, half the cores)")
    ap.add_argument("--max_latency", type=float, default=0.5, help="the server's --max_latency (0: no limit)")
    ap.add_argument("--chunk_size", type=int, default=16, help="the server's --chunk_size")
    ap.add_argument("--num_left_chunks", type=int, default=8, help="the server's --num_left_chunks")
    ap.add_argument("--port", type=int, default=18790)
    ap.add_argument("--work", default=str(ROOT / "exp" / "bench" / "serve"))
    ap.add_argument("--tick_costs", action="store_true",
                    help="time the worker's batched encoder call per batch size instead of running clients")
    ap.add_argument("--prepare_only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from paddle_asr.cpu_settings import predictor_threads

    args.threads = predictor_threads(args.threads)  # what the server resolves it to, for the tables
    work = Path(args.work)
    log = lambda msg: print(f"[serve] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.prepare_only:
        prepare(work, log)
        return []
    if not (work / "onnx_int8" / ".done").is_file():  # PaddleSlim in a process of its own
        subprocess.run([sys.executable, __file__, "--prepare_only", "--work", args.work], check=True)
    cpu, pcm, rows = cpu_description(), load_audio(args.seconds), []
    log(f"CPU: {cpu}")
    if args.tick_costs:
        for precision, runtime in engines(args):
            rows += tick_costs(work / precision, precision, runtime, args, pcm)
        print(tick_table(rows, cpu, args), flush=True)
        return rows
    for precision, runtime in engines(args):
        for mode in MODES:
            rows += sweep(work / precision, precision, runtime, mode, args, pcm)
    int8_meta = json.loads((work / "int8" / "meta.json").read_text(encoding="utf-8"))
    print(table(rows, cpu, int8_meta.get("int8_functions", []), args), flush=True)
    return rows


if __name__ == "__main__":
    main()
