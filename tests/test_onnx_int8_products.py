"""ONNX Runtime's INT8 matrix products are exact on every x86 CPU. Without VNNI its default kernels
add pairs of 8-bit products in 16 bits, which clamp; `OrtProgram` asks the kernels
(`onnx_backend.int8_products_saturate`) and has such a CPU use exact ones. Checked on this CPU and on
it held to AVX2 by bench/avx2_only.py, where the default kernels do clamp (255 x 127 pairs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, save

from paddle_asr.export.onnx_int8 import quantize_onnx_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import avx2_only  # noqa: E402

CAN_TRAP_CPUID = avx2_only.can_hold()
K = 64  # x @ w with x and w all ones: every output is K, every INT8 pair 255 x 127

RUN = """
import json, sys, numpy as np, onnxruntime as ort
from paddle_asr.export.onnx_backend import OrtProgram, int8_products_saturate
x = {"x": np.ones((4, int(sys.argv[2])), np.float32)}
ours = OrtProgram(sys.argv[1], 1).run(x)[0]
plain = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, x)[0]
print(json.dumps({"saturate": int8_products_saturate(), "ours": ours.tolist(), "plain": plain.tolist()}))
"""


def int8_model(tmp_path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "ones",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [K, 8], [1.0] * K * 8)])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "fp32.onnx")
    quantize_onnx_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    return tmp_path / "int8.onnx"


def products(model: Path, *wrapper: str) -> dict:
    done = subprocess.run([*wrapper, sys.executable, "-c", RUN, str(model), str(K)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_int8_products_are_exact_here_and_held_to_avx2(tmp_path):
    model = int8_model(tmp_path)
    here = products(model)
    np.testing.assert_allclose(here["ours"], K, rtol=1e-3)
    # The probe agrees with the kernels: the plain session clamps exactly where it says so.
    assert here["saturate"] == (abs(np.asarray(here["plain"]) - K).max() > 1)
    if not CAN_TRAP_CPUID:
        return  # test_avx2_only.py checks that the hold is refused here
    held = products(model, sys.executable, str(REPO / "bench" / "avx2_only.py"))
    assert held["saturate"]
    assert np.abs(np.asarray(held["plain"]) - K).max() > K / 4  # AVX2's default kernels clamp...
    np.testing.assert_allclose(held["ours"], K, rtol=1e-3)  # ...OrtProgram's do not
