"""The kernel cache: lives under SPARSEJIT_CACHE_DIR, survives corrupt entries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
import sparsejit
w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Erf", ["m"], ["y"])],
                      "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 3])], [w])
engine = sparsejit.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                           batch_size=2, sequence_length=5)
x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(2, 5, 4)
import math
want = np.vectorize(math.erf)(x.astype(np.float64) @ (np.arange(12).reshape(4, 3) / 10))
assert np.abs(engine.run({"x": x})["y"] - want).max() < 1e-5
print("ok")
"""


def _run(cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["SPARSEJIT_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)


def test_cache_location_and_corrupt_entries_are_rebuilt(tmp_path) -> None:
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr
    entries = [p for p in tmp_path.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert entries, "no Numba cache entries under SPARSEJIT_CACHE_DIR"
    for path in entries:  # truncate every index and data file
        path.write_bytes(path.read_bytes()[:7])
    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "ok" in second.stdout
    assert "corrupt kernel cache" in second.stderr
