"""ONNX export of a U2 bundle with paddle2onnx, laid out for sherpa-onnx and for our own ONNX Runtime backend.

    <onnx>/model.onnx            sherpa-onnx's WeNet CTC model (`OfflineRecognizer.from_wenet_ctc`): x [N, T, D]
                                 (sherpa-onnx's fbank), x_lens [N] -> log_probs [N, T', V], log_probs_lens [N]
    <onnx>/model-streaming.onnx  one stream's next chunk in WeNet's interface (`OnlineRecognizer.from_wenet_ctc`):
                                 x [1, W, D], offset [1], required_cache_size [1], attn_cache [L, H, R, 2*d_k],
                                 conv_cache [L, 1, d, k-1], attn_mask [1, 1, R + chunk] -> log_probs,
                                 next_att_cache [L, H, R, 2*d_k], next_conv_cache (streaming models only)
    <onnx>/encoder.onnx, encoder_chunk.onnx, ctc_activation.onnx, decoder.onnx
                                 the bundle's programs (export.u2: our fbank, batched streams), for our runtime;
                                 a U2++ decoder.onnx has a second output, r_decoder_log_probs
    <onnx>/tokens.txt            `unit id` lines (sherpa-onnx); vocab.txt, features.yaml, meta.json as the bundle's

Our runtime's files come from the bundle's programs through paddle2onnx; afterwards their graphs are
only renamed (inputs, outputs and their order). sherpa-onnx's two files have no counterpart among
the programs: they are traced from the dynamic-graph model (`WenetOffline`, `WenetChunk`, around the
same `forward_encoder` and `forward_encoder_chunk`) and converted the same way. Both read the fbank
sherpa-onnx computes (mel banks to 7600 Hz, no snip_edges), which `SherpaFbank` turns into ours
before the model: a fixed bank map (`features.mel_bank_map`) and the frames moved onto ours. A
conversion that fails leaves no output directory and names the operators paddle2onnx lacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import paddle
from paddle.static import InputSpec

from paddle_asr.artifacts import atomic_directory, atomic_write_text
from paddle_asr.config import FeatureConfig
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import META, VOCAB, copy_bundle_files, read_bundle
from paddle_asr.export.common import ExportError, RuntimeFunction, save_function
from paddle_asr.export.inference import find_model_files, quiet_output
from paddle_asr.features import mel_bank_map

OPSET = 17
OFFLINE_MODEL = "model.onnx"
STREAMING_MODEL = "model-streaming.onnx"
ENCODER = "encoder.onnx"
CHUNK = "encoder_chunk.onnx"
TOKENS = "tokens.txt"
# sherpa-onnx's fbank for WeNet models (its FeatureExtractorConfig defaults): mel banks up to
# Nyquist - 400 Hz, no snip_edges; otherwise Kaldi's, as ours (docs/onnx.md has the table).
SHERPA_HIGH_FREQ_OFFSET = -400.0
# ONNX names of each converted program's inputs and outputs, in the order our backend passes and
# reads them (paddle2onnx names outputs fetch_name_<i> and orders inputs its own way); a
# DeepSpeech2 encoder_chunk's are `program_io`'s.
PROGRAM_IO = {
    "encoder": (("feats", "feats_lengths"), ("encoder_out", "encoder_lengths", "ctc_log_probs")),
    "encoder_chunk": (("xs", "offsets", "att_cache", "cache_lengths", "cnn_cache"),
                      ("chunk_out", "att_cache_out", "cnn_cache_out")),
    "ctc_activation": (("encoder_out",), ("ctc_log_probs",)),
    "decoder": (("hyps", "hyps_lengths", "encoder_out", "encoder_lengths"), ("decoder_log_probs",)),
    "decoder_step": (("tokens", "att_cache", "encoder_out", "encoder_lengths"), ("step_log_probs", "step_att_cache")),
}
# sherpa-onnx's files: passed and read by position, in this order.
OFFLINE_IO = (("x", "x_lens"), ("log_probs", "log_probs_lens"))
STREAMING_IO = (("x", "offset", "required_cache_size", "attn_cache", "conv_cache", "attn_mask"),
                ("log_probs", "next_att_cache", "next_conv_cache"))
# Kaldi's floor on mel energies (float epsilon), as kaldi-native-fbank takes the log.
ENERGY_FLOOR = 1.1920929e-07


def snip_edges_shift(features: FeatureConfig) -> tuple[int, float]:
    """Where our frame t lies in sherpa-onnx's frames, as (k, w): between its t + k and t + k + 1, at w.
    Without snip_edges (sherpa-onnx) frame i starts at i * shift - (window - shift) / 2, with them
    (ours) at i * shift (Kaldi's FirstSampleOfFrame)."""
    window = int(features.sample_rate * features.frame_length_ms / 1000)
    shift = int(features.sample_rate * features.frame_shift_ms / 1000)
    k, rest = divmod((window - shift) // 2, shift)
    return k, rest / shift


class SherpaFbank(paddle.nn.Layer):
    """sherpa-onnx's log-mel fbank [B, T, bins] -> ours, on our frames.

    Banks: exp, the fixed bank map (the identity when the model was trained with sherpa-onnx's upper
    edge, `features.high_freq: -400`). Frames: sherpa-onnx frames the audio without snip_edges, 120
    samples (at 25/10 ms) before ours, so each of our frames is read off its two nearest sherpa-onnx
    frames, their energies interpolated linearly. Offline the last frame, which has no right
    neighbour, is dropped (T - 1 - k frames); streaming (`keep_length`) sherpa-onnx feeds windows of
    an exact frame count, so the frames without a right neighbour repeat the last one (they are the
    window's right context, read again at the start of the next window). Then log."""

    def __init__(self, features: FeatureConfig, keep_length: bool) -> None:
        super().__init__()
        bank_map = mel_bank_map(features, features.sample_rate / 2 + SHERPA_HIGH_FREQ_OFFSET)
        self.bank_map = self.create_parameter(list(bank_map.T.shape), dtype="float32",
                                              default_initializer=paddle.nn.initializer.Assign(bank_map.T))
        self.bank_map.stop_gradient = True
        self.k, self.w = snip_edges_shift(features)
        self.keep_length = keep_length

    def forward(self, x):
        e, k, w = paddle.matmul(paddle.exp(x), self.bank_map), self.k, self.w
        if self.keep_length:
            e = paddle.concat([e] + [e[:, -1:]] * (k + 1), axis=1)
        e = e[:, k:-1] * (1.0 - w) + e[:, k + 1:] * w
        return paddle.log(paddle.clip(e, min=ENERGY_FLOOR))


class WenetOffline(paddle.nn.Layer):
    """WeNet's offline ONNX interface (what sherpa-onnx feeds and reads) on our `forward_encoder`."""

    def __init__(self, model: paddle.nn.Layer, features: FeatureConfig) -> None:
        super().__init__()
        self.model, self.fbank = model, SherpaFbank(features, keep_length=False)
        self.dropped = self.fbank.k + 1

    def forward(self, x, x_lens):
        _, lengths, log_probs = self.model.forward_encoder(self.fbank(x), paddle.clip(x_lens - self.dropped, min=0))
        return log_probs, lengths


class WenetChunk(paddle.nn.Layer):
    """WeNet's streaming ONNX interface (what sherpa-onnx feeds) on our `forward_encoder_chunk`:
    sherpa-onnx keeps a fixed-size cache of R = chunk_size * num_left_chunks frames, right-aligned,
    its first frames masked out by `attn_mask` until that many have been emitted, and an `offset`
    that starts at R. Our program takes the same right-aligned cache with its valid length."""

    def __init__(self, model: paddle.nn.Layer, features: FeatureConfig) -> None:
        super().__init__()
        self.model, self.fbank = model, SherpaFbank(features, keep_length=True)

    def forward(self, x, offset, required_cache_size, attn_cache, conv_cache, attn_mask):
        cache = paddle.shape(attn_cache)[2]
        valid = paddle.sum(paddle.cast(attn_mask[:, 0, :cache], "int64"), axis=-1)
        y, att, cnn = self.model.forward_encoder_chunk(self.fbank(x), offset - required_cache_size,
                                                       attn_cache.unsqueeze(1), valid, conv_cache)
        att = paddle.concat([attn_cache, att[:, 0]], axis=2)
        return self.model.ctc_activation(y), att[:, :, paddle.shape(att)[2] - cache:, :], cnn


def sherpa_functions(model, features: FeatureConfig, streaming: bool) -> list[tuple[str, RuntimeFunction]]:
    """(file, function) of sherpa-onnx's offline model and, when the model streams, its streaming one."""
    enc, dim = model.encoder, features.num_mel_bins
    d, layers, heads = enc.output_size, len(enc.encoders), enc.conf.attention_heads
    fns = [(OFFLINE_MODEL, RuntimeFunction("model", "forward", (
        InputSpec([None, None, dim], "float32", "x"), InputSpec([None], "int64", "x_lens")),
        layer=WenetOffline(model, features)))]
    if streaming:
        fns.append((STREAMING_MODEL, RuntimeFunction("model_streaming", "forward", (
            InputSpec([1, None, dim], "float32", "x"), InputSpec([1], "int64", "offset"),
            InputSpec([1], "int64", "required_cache_size"),
            InputSpec([layers, heads, None, 2 * (d // heads)], "float32", "attn_cache"),
            InputSpec([layers, 1, d, max(enc.cnn_cache_frames, 1)], "float32", "conv_cache"),
            InputSpec([1, 1, None], "bool", "attn_mask")), layer=WenetChunk(model, features))))
    return fns


# PIR operator names paddle2onnx lists under another name in get_all_supported_operators_pir().
_P2O_NAMES = {"add": "elementwise_add", "subtract": "elementwise_sub", "multiply": "elementwise_mul",
              "divide": "elementwise_div", "maximum": "elementwise_max", "minimum": "elementwise_min",
              "remainder": "elementwise_mod", "floor_divide": "elementwise_floordiv", "elementwise_pow": "pow",
              "matmul": "matmul_v2", "unsqueeze": "unsqueeze2", "arange": "range", "expand": "expand_v2",
              "flatten": "flatten_contiguous_range", "topk": "top_k_v2", "max": "reduce_max", "min": "reduce_min",
              "mean": "reduce_mean", "prod": "reduce_prod", "all": "reduce_all", "any": "reduce_any"}
_NO_CONVERSION_NEEDED = {"pd_op.feed", "pd_op.fetch", "pd_op.data", "builtin.parameter", "builtin.constant",
                         "builtin.shadow_output"}


def unconvertible_ops(program_dir: Path) -> list[str]:
    """The operators of a program that paddle2onnx has no converter for (its PIR operator list)."""
    import paddle2onnx.paddle2onnx_cpp2py_export as p2o

    supported = set(p2o.get_all_supported_operators_pir())
    prog, _ = find_model_files(program_dir)
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.pir_utils.OldIrGuard(), quiet_output():
        program, _, _ = paddle.static.load_inference_model(str(prog.with_suffix("")), exe)
    with quiet_output():
        pir_program = paddle.pir.translate_to_pir(program.desc)  # held: its blocks do not keep it alive
        names = {op.name() for op in pir_program.global_block().ops}
    missing = []
    for name in sorted(names - _NO_CONVERSION_NEEDED):
        short = name.split(".", 1)[-1]
        if name.startswith("builtin."):
            short = "builtin_" + short
        if short not in supported and _P2O_NAMES.get(short) not in supported:
            missing.append(name)
    return missing


def convert_program(program_dir: Path, out_file: Path) -> None:
    """One Paddle program -> `out_file` (ONNX, opset OPSET) through paddle2onnx, in a child process
    (paddle2onnx aborts the process on an operator it cannot convert, without naming it); an
    ExportError naming those operators, or with paddle2onnx's output when it fails otherwise."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the paddle_asr package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"  # see _fold_and_save
    proc = subprocess.run([sys.executable, "-m", "paddle_asr.export.onnx", str(program_dir), str(out_file)],
                          capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        return
    ops = unconvertible_ops(program_dir)
    if ops:
        raise ExportError(f"paddle2onnx cannot convert {program_dir}: it has no ONNX conversion for operator(s) "
                          f"{', '.join(ops)}")
    tail = (proc.stdout + proc.stderr)[-3000:]
    raise ExportError(f"paddle2onnx failed on {program_dir} (exit status {proc.returncode}):\n{tail}")


def _convert_here(program_dir: Path, out_file: Path) -> None:
    import paddle2onnx

    prog, params = find_model_files(program_dir)
    model_bytes = paddle2onnx.export(str(prog), str(params), save_file=None, opset_version=OPSET,
                                     enable_onnx_checker=True, enable_optimize=True)
    _fold_and_save(model_bytes, out_file)


def _fold_and_save(model_bytes: bytes, out_file: Path) -> None:
    """Constant folding (Polygraphy, as paddle2onnx's own CLI does) and the ONNX checker."""
    import onnx
    import polygraphy.config
    from polygraphy.backend.onnx import fold_constants

    # Polygraphy can pip-install what it misses (paddle2onnx turns that on), which once replaced
    # numpy 1.26 with numpy 2 in our environment: its dependencies are pinned in requirements.txt.
    polygraphy.config.AUTOINSTALL_DEPS = False
    model = onnx.load_from_string(model_bytes)
    with quiet_output():
        folded = fold_constants(model)
    onnx.checker.check_model(folded, full_check=True)
    onnx.save(folded, str(out_file))


def _rename_graph(graph, mapping: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attr in node.attribute:  # If/Loop bodies read outer names
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_graph(sub, mapping)
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = mapping.get(value.name, value.name)


def name_io(onnx_file: Path, inputs: dict[str, str], outputs: tuple[str, ...], metadata: dict | None = None) -> None:
    """Rename and order a converted graph's inputs ({Paddle name: ONNX name}, in the wanted order)
    and outputs (names for paddle2onnx's fetch_name_<i>, in the program's return order), and set
    its metadata."""
    import onnx

    model = onnx.load(str(onnx_file))
    graph = model.graph
    got = [v.name for v in graph.input]
    if sorted(got) != sorted(inputs) or len(graph.output) != len(outputs):
        raise ExportError(f"{onnx_file}: inputs {got} and {len(graph.output)} outputs, expected inputs "
                          f"{list(inputs)} and outputs {list(outputs)}")
    mapping = {**inputs, **{v.name: new for v, new in zip(graph.output, outputs)}}
    _rename_graph(graph, mapping)
    order = list(inputs.values())
    ordered = sorted(graph.input, key=lambda v: order.index(v.name))
    del graph.input[:]
    graph.input.extend(ordered)
    del model.metadata_props[:]
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_file))


def wenet_metadata(meta: dict, streaming: bool) -> dict:
    """The metadata sherpa-onnx's WeNet CTC models read (its online/offline-wenet-ctc-model.cc)."""
    data = {"model_type": "wenet_ctc", "version": "1", "model_author": "paddle_asr",
            "comment": "streaming" if streaming else "non-streaming", "vocab_size": meta["vocab_size"],
            "subsampling_factor": meta["subsampling_rate"],
            # Informative (sherpa-onnx reads none of it): the fbank this file expects.
            "fbank": "sherpa-onnx's for WeNet models (kaldi-native-fbank, mel 20-7600 Hz, no snip_edges); mapped "
                     "inside to the model's own (mel 20 Hz to Nyquist), CMVN inside"}
    if streaming:
        layers, heads, _, _ = meta["att_cache_shape"]
        _, d, k1 = meta["cnn_cache_shape"]
        data.update(head=heads, num_blocks=layers, output_size=d, cnn_module_kernel=max(k1, 1) + 1,
                    right_context=meta["right_context"])
    return data


def write_tokens(vocab: Path, out: Path) -> None:
    """sherpa-onnx's tokens.txt: `unit id` per line (its blank is the unit named <blank>)."""
    units = [line.strip() for line in vocab.read_text(encoding="utf-8").splitlines() if line.strip()]
    atomic_write_text(out, "".join(f"{u} {i}\n" for i, u in enumerate(units)))


def _convert_traced(model, fn: RuntimeFunction, out_file: Path) -> None:
    """Trace `fn` as a Paddle program beside `out_file` and convert it."""
    with tempfile.TemporaryDirectory(prefix=f".{fn.name}_", dir=out_file.parent) as program_dir:
        save_function(model, fn, Path(program_dir))
        convert_program(Path(program_dir), out_file)


def export_onnx(bundle: Path, out: Path, model=None) -> list[str]:
    """The ONNX export of the FP32 bundle `bundle` in `out` (layout in the module docstring); for a
    U2 model, `model` (the dynamic graph the bundle came from) adds sherpa-onnx's files. Written to
    a temporary directory and renamed into place: a conversion that fails leaves no `out`. Returns
    the files written."""
    import json

    bundle, out = Path(bundle), Path(out)
    meta = json.loads((bundle / META).read_text(encoding="utf-8"))
    try:
        return _write_onnx(bundle, out, meta, model)
    except ExportError as e:
        raise AsrError(f"ONNX export of {bundle} failed, {out} not written: {e}") from None


def program_io(meta: dict, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(inputs, outputs) of the bundle program `name` (meta.json `meta`) in its ONNX file."""
    if meta.get("model") == "deepspeech2" and name == "encoder_chunk":
        states = tuple(meta["state_names"])
        return ("feats", "feats_lengths", *states), ("encoder_out", "encoder_lengths", *(f"{s}_out" for s in states))
    if name == "decoder" and meta.get("bidirectional_decoder"):  # U2++: WeNet's decoder.onnx gives r_score too
        return PROGRAM_IO[name][0], (*PROGRAM_IO[name][1], "r_decoder_log_probs")
    return PROGRAM_IO[name]


def _write_onnx(bundle: Path, out: Path, meta: dict, model) -> list[str]:
    with atomic_directory(out) as tmp:
        for name in PROGRAM_IO:
            if (bundle / name).is_dir():
                inputs, outputs = program_io(meta, name)
                convert_program(bundle / name, tmp / f"{name}.onnx")
                name_io(tmp / f"{name}.onnx", {n: n for n in inputs}, outputs)
        if model is not None and meta.get("model", "u2") == "u2":  # sherpa-onnx has no DeepSpeech2 model
            _, features, _ = read_bundle(bundle)
            for file, fn in sherpa_functions(model, features, bool(meta.get("supports_streaming"))):
                _convert_traced(model, fn, tmp / file)
                io = STREAMING_IO if file == STREAMING_MODEL else OFFLINE_IO
                name_io(tmp / file, {n: n for n in io[0]}, io[1], wenet_metadata(meta, file == STREAMING_MODEL))
        write_tokens(bundle / VOCAB, tmp / TOKENS)
        copy_bundle_files(bundle, tmp, runtime="onnx", onnx_opset=OPSET)
        return sorted(p.name for p in tmp.iterdir())


if __name__ == "__main__":  # the child process of convert_program
    _convert_here(Path(sys.argv[1]), Path(sys.argv[2]))
