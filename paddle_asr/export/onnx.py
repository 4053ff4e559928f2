"""ONNX export of a U2 bundle with paddle2onnx, laid out for sherpa-onnx and for our own ONNX Runtime backend.

    <onnx>/model.onnx            the encoder (`encoder` program, CMVN inside): x [N, T, D], x_lens [N]
                                 -> log_probs [N, T', V], log_probs_lens [N], encoder_out [N, T', d];
                                 sherpa-onnx's WeNet CTC model (`OfflineRecognizer.from_wenet_ctc`)
    <onnx>/model-streaming.onnx  one stream's next chunk in WeNet's interface (`OnlineRecognizer.from_wenet_ctc`):
                                 x [1, W, D], offset [1], required_cache_size [1], attn_cache [L, H, R, 2*d_k],
                                 conv_cache [L, 1, d, k-1], attn_mask [1, 1, R + chunk] -> log_probs,
                                 next_att_cache [L, H, R, 2*d_k], next_conv_cache (streaming models only)
    <onnx>/encoder_chunk.onnx    our batched chunk program (export.u2), for our server and stages 5/6
    <onnx>/ctc_activation.onnx, decoder.onnx   the other programs, inputs and outputs as in export.u2
    <onnx>/tokens.txt            `unit id` lines (sherpa-onnx); vocab.txt, features.yaml, meta.json as the bundle's

Every file comes from a Paddle program through paddle2onnx; what is done to its graph afterwards is
only naming (inputs, outputs and their order, which sherpa-onnx reads by position) and metadata.
WeNet's streaming interface has no counterpart among the bundle's programs, so it is traced from
the dynamic-graph model (`WenetChunk`, around the same `forward_encoder_chunk`) and converted the
same way. A conversion that fails leaves no output directory and names the operators paddle2onnx
lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import paddle
from paddle.static import InputSpec

from paddle_asr.artifacts import atomic_directory, atomic_write_text
from paddle_asr.errors import AsrError
from paddle_asr.export.bundle import META, VOCAB, copy_bundle_files
from paddle_asr.export.common import ExportError, RuntimeFunction, save_function
from paddle_asr.export.inference import find_model_files, quiet_output

OPSET = 17
OFFLINE_MODEL = "model.onnx"
STREAMING_MODEL = "model-streaming.onnx"
TOKENS = "tokens.txt"
# ONNX names of each converted program's inputs and outputs, in the order sherpa-onnx and our
# backend pass and read them (paddle2onnx names outputs fetch_name_<i> and orders inputs its own way).
# The offline model's outputs in the encoder program's return order, then in sherpa-onnx's.
OFFLINE_IO = (("x", "x_lens"), ("encoder_out", "log_probs_lens", "log_probs"))
OFFLINE_OUTPUT_ORDER = ("log_probs", "log_probs_lens", "encoder_out")
PROGRAM_IO = {
    "encoder_chunk": (("xs", "offsets", "att_cache", "cache_lengths", "cnn_cache"),
                      ("chunk_out", "att_cache_out", "cnn_cache_out")),
    "ctc_activation": (("encoder_out",), ("ctc_log_probs",)),
    "decoder": (("hyps", "hyps_lengths", "encoder_out", "encoder_lengths"), ("decoder_log_probs",)),
}
STREAMING_IO = (("x", "offset", "required_cache_size", "attn_cache", "conv_cache", "attn_mask"),
                ("log_probs", "next_att_cache", "next_conv_cache"))


class WenetChunk(paddle.nn.Layer):
    """WeNet's streaming ONNX interface (what sherpa-onnx feeds) on our `forward_encoder_chunk`:
    sherpa-onnx keeps a fixed-size cache of R = chunk_size * num_left_chunks frames, right-aligned,
    its first frames masked out by `attn_mask` until that many have been emitted, and an `offset`
    that starts at R. Our program takes the same right-aligned cache with its valid length."""

    def __init__(self, model: paddle.nn.Layer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, offset, required_cache_size, attn_cache, conv_cache, attn_mask):
        cache = paddle.shape(attn_cache)[2]
        valid = paddle.sum(paddle.cast(attn_mask[:, 0, :cache], "int64"), axis=-1)
        y, att, cnn = self.model.forward_encoder_chunk(x, offset - required_cache_size, attn_cache.unsqueeze(1),
                                                       valid, conv_cache)
        total = paddle.shape(att)[3]
        return self.model.ctc_activation(y), att[:, 0, :, total - cache:, :], cnn


def wenet_chunk_function(model, feat_dim: int) -> RuntimeFunction:
    enc = model.encoder
    d, layers, heads = enc.output_size, len(enc.encoders), enc.conf.attention_heads
    return RuntimeFunction("model_streaming", "forward", (
        InputSpec([1, None, feat_dim], "float32", "x"), InputSpec([1], "int64", "offset"),
        InputSpec([1], "int64", "required_cache_size"),
        InputSpec([layers, heads, None, 2 * (d // heads)], "float32", "attn_cache"),
        InputSpec([layers, 1, d, max(enc.cnn_cache_frames, 1)], "float32", "conv_cache"),
        InputSpec([1, 1, None], "bool", "attn_mask")), layer=WenetChunk(model))


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
    import paddle_asr

    env = dict(os.environ)
    root = str(Path(paddle_asr.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
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


def name_io(onnx_file: Path, inputs: dict[str, str], outputs: tuple[str, ...], metadata: dict | None = None,
            output_order: tuple[str, ...] | None = None) -> None:
    """Rename and order a converted graph's inputs ({Paddle name: ONNX name}, in the wanted order)
    and outputs (names for paddle2onnx's fetch_name_<i>, in the program's return order; then put in
    `output_order` when given), and set its metadata."""
    import onnx

    model = onnx.load(str(onnx_file))
    graph = model.graph
    got = [v.name for v in graph.input]
    if sorted(got) != sorted(inputs) or len(graph.output) != len(outputs):
        raise ExportError(f"{onnx_file}: inputs {got} and {len(graph.output)} outputs, expected inputs "
                          f"{list(inputs)} and outputs {list(outputs)}")
    mapping = {**inputs, **{v.name: new for v, new in zip(graph.output, outputs)}}
    _rename_graph(graph, mapping)
    for values, names in ((graph.input, list(inputs.values())), (graph.output, list(output_order or outputs))):
        ordered = sorted(values, key=lambda v: names.index(v.name))
        del values[:]
        values.extend(ordered)
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
            # Informative (sherpa-onnx reads none of it): the fbank the model was trained on, which
            # export.sherpa.sherpa_recognizer sets; from_wenet_ctc uses 20-7600 Hz, no snip_edges.
            "fbank": "kaldi-native-fbank povey 25/10 ms, samples x 32768, mel 20 Hz to Nyquist, snip_edges, "
                     "dither 0, CMVN inside the model"}
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


def _convert_streaming(model, feat_dim: int, tmp: Path) -> Path:
    """Trace `WenetChunk` as a Paddle program in `tmp` and convert it."""
    fn = wenet_chunk_function(model, feat_dim)
    with tempfile.TemporaryDirectory(prefix="wenet_chunk_", dir=tmp) as program_dir:
        save_function(model, fn, Path(program_dir))
        convert_program(Path(program_dir), tmp / STREAMING_MODEL)
    return tmp / STREAMING_MODEL


def export_onnx(bundle: Path, out: Path, model=None) -> list[str]:
    """The ONNX export of the FP32 U2 bundle `bundle` in `out` (layout in the module docstring);
    `model` (the dynamic graph the bundle came from) adds sherpa-onnx's streaming model when the
    bundle streams. Written to a temporary directory and renamed into place: a conversion that
    fails leaves no `out`. Returns the files written."""
    import json

    bundle, out = Path(bundle), Path(out)
    meta = json.loads((bundle / META).read_text(encoding="utf-8"))
    if meta.get("model", "u2") != "u2":
        raise AsrError(f"{bundle}: ONNX export covers U2 models; {meta.get('model')} is not exported to ONNX yet")
    try:
        return _write_onnx(bundle, out, meta, model)
    except ExportError as e:
        raise AsrError(f"ONNX export of {bundle} failed, {out} not written: {e}") from None


def _write_onnx(bundle: Path, out: Path, meta: dict, model) -> list[str]:
    feeds = ("feats", "feats_lengths")
    with atomic_directory(out) as tmp:
        convert_program(bundle / "encoder", tmp / OFFLINE_MODEL)
        name_io(tmp / OFFLINE_MODEL, dict(zip(feeds, OFFLINE_IO[0])), OFFLINE_IO[1], wenet_metadata(meta, False),
                OFFLINE_OUTPUT_ORDER)
        for name, (inputs, outputs) in PROGRAM_IO.items():
            if (bundle / name).is_dir():
                convert_program(bundle / name, tmp / f"{name}.onnx")
                name_io(tmp / f"{name}.onnx", {n: n for n in inputs}, outputs)
        if model is not None and meta.get("supports_streaming"):
            _convert_streaming(model, int(meta["input_dim"]), tmp)
            name_io(tmp / STREAMING_MODEL, {n: n for n in STREAMING_IO[0]}, STREAMING_IO[1],
                    wenet_metadata(meta, True))
        write_tokens(bundle / VOCAB, tmp / TOKENS)
        copy_bundle_files(bundle, tmp, runtime="onnx", onnx_opset=OPSET)
        return sorted(p.name for p in tmp.iterdir())


if __name__ == "__main__":  # the child process of convert_program
    _convert_here(Path(sys.argv[1]), Path(sys.argv[2]))


# The files stage 6 quantizes for each program name of `paddle-asr quantize --functions` (the
# encoder brings its streaming forms along, as the Paddle INT8 bundle's encoder_chunk).
INT8_FILES = {"encoder": (OFFLINE_MODEL, STREAMING_MODEL, "encoder_chunk.onnx"), "decoder": ("decoder.onnx",)}


def quantize_onnx_export(src: Path, out: Path, functions: list[str]) -> list[str]:
    """The INT8 ONNX export of the FP32 one in `src`: ONNX Runtime's dynamic quantization of every
    MatMul (INT8 weights, activations quantized per call), as WeNet's sherpa-onnx models are, for
    the files of `functions`; the others are copied. Returns the quantized files."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = Path(src), Path(out)
    names = [f for fn in functions for f in INT8_FILES.get(fn, ()) if (src / f).is_file()]
    with atomic_directory(out) as tmp:
        for path in sorted(src.iterdir()):
            if path.name in names:
                with quiet_output():
                    quantize_dynamic(str(path), str(tmp / path.name), op_types_to_quantize=["MatMul"],
                                     weight_type=QuantType.QInt8)
            elif path.is_file() and not path.name.startswith("."):  # not the FP32 export's completion record
                shutil.copyfile(path, tmp / path.name)
        copy_bundle_files(src, tmp, precision="int8", int8_functions=functions, onnx_int8_files=names)
    return names
