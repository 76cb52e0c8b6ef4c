"""`graph.onnx_file`: an ONNX file read with its large initializers left in the file, each read once.

Reference: onnx's own `onnx.load` + `numpy_helper.to_array` on the same file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsejit.graph import onnx_file
from sparsejit.graph.onnx_import import load_onnx, read_model_proto

_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64,
           np.uint32, np.uint64, np.bool_]


def _model_with(initializers: list[TensorProto]) -> onnx.ModelProto:
    """Identity of `x`, plus every initializer as a graph output (so none is dead)."""
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]
    for t in initializers:
        nodes.append(helper.make_node("Identity", [t.name], [t.name + "_out"]))
        outputs.append(helper.make_tensor_value_info(t.name + "_out", t.data_type, list(t.dims)))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], outputs,
                              initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tensors(rng: np.random.Generator) -> list[TensorProto]:
    out = []
    for i, dt in enumerate(_DTYPES):
        shape = (67, 71) if i % 2 else (5000,)  # above MIN_SPAN_BYTES at one byte an entry
        if dt == np.bool_:
            arr = rng.random(shape) < 0.5
        elif np.issubdtype(dt, np.floating):
            arr = rng.standard_normal(shape).astype(dt)
        else:
            info = np.iinfo(dt)
            arr = rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dt)
        out.append(numpy_helper.from_array(arr, f"w_{np.dtype(dt).name}"))
    out.append(numpy_helper.from_array(np.arange(5, dtype=np.float32), "small"))  # stays in the message
    out.append(numpy_helper.from_array(np.array(2.5, np.float32), "scalar"))
    out.append(helper.make_tensor("typed", TensorProto.FLOAT, [4096], rng.standard_normal(4096).tolist()))  # float_data
    return out


def test_initializers_equal_onnx_load(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model_with(_tensors(np.random.default_rng(0))), str(path))
    read = onnx_file.read_model_file(str(path))
    assert read is not None
    stripped, spans = read
    reference = onnx.load(str(path))
    names = [t.name for t in reference.graph.initializer]
    assert {names[i] for i in spans} == {f"w_{np.dtype(d).name}" for d in _DTYPES}  # large raw ones only
    assert stripped.ByteSize() < 20_000 < reference.ByteSize()
    graph = load_onnx(str(path))
    for t in reference.graph.initializer:
        expected = numpy_helper.to_array(t)
        got = graph.initializers[t.name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, t.name
        np.testing.assert_array_equal(got, expected, err_msg=t.name)
    # everything but the weights' bytes is the file's own
    for i in spans:
        assert not stripped.graph.initializer[i].raw_data
        reference.graph.initializer[i].ClearField("raw_data")
    assert stripped.SerializeToString(deterministic=True) == reference.SerializeToString(deterministic=True)
    assert [v.name for v in read_model_proto(str(path)).graph.input] == ["x"]


def test_external_data_and_odd_files_go_the_ordinary_way(tmp_path) -> None:
    model = _model_with([numpy_helper.from_array(np.arange(4096, dtype=np.float32), "w")])
    ext = tmp_path / "ext.onnx"
    onnx.save(model, str(ext), save_as_external_data=True, location="w.bin", size_threshold=0)
    stripped, spans = onnx_file.read_model_file(str(ext))
    assert spans == {}  # the external tensor is left to tensor_to_array
    np.testing.assert_array_equal(load_onnx(str(ext)).initializers["w"], np.arange(4096, dtype=np.float32))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert onnx_file.read_model_file(str(empty)) is None
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x0f" * 100)  # wire type 7 does not exist
    assert onnx_file.read_model_file(str(garbage)) is None


def test_truncated_weight_is_a_model_load_error(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model_with([numpy_helper.from_array(np.ones(8192, np.float32), "w")]), str(path))
    _, spans = onnx_file.read_model_file(str(path))
    span = spans[0]
    bad = onnx_file.WeightSpan(span.path, span.offset, span.length - 4, span.dtype, span.dims)
    with pytest.raises(onnx_file.ModelLoadError, match="corrupt"):
        onnx_file.read_span(bad)


_PEAK = """
import json, sys
import psutil
from sparsejit.graph.onnx_import import load_onnx
base = psutil.Process().memory_info().rss
hwm = lambda: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
assert hwm() - base < 8 * 2**20, "the imports' own peak would hide the load's"
graph = load_onnx(sys.argv[1])
print(json.dumps({"peak": hwm() - base, "held": sum(a.nbytes for a in graph.initializers.values())}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_loading_holds_the_weights_about_once(tmp_path) -> None:
    """onnx.load + to_array peaks at about 2x the weights (file bytes + message, then message + arrays)."""
    path = tmp_path / "big.onnx"
    weights = [numpy_helper.from_array(np.full((1024, 4096), i, np.float32), f"w{i}") for i in range(6)]  # 96 MiB
    onnx.save(_model_with(weights), str(path))
    del weights
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["held"] == 6 * 1024 * 4096 * 4
    assert r["peak"] < 1.25 * r["held"], r
