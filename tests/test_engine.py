"""Engine behaviour: buckets, padding, typed errors for bad models and bad inputs, weight sharing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsejit
from sparsejit.errors import (
    BatchTooLargeError,
    ExternalDataError,
    InvalidInputError,
    ModelLoadError,
    SequenceTooLongError,
    UnsupportedOperatorError,
)

HIDDEN = 8


def _toy_model(extra_nodes: list | None = None) -> onnx.ModelProto:
    """Embedding lookup + masked projection: out[b, s, :] = (E[ids] @ W) * mask."""
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((50, HIDDEN)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w"], ["h"], name="proj"),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"], name="unsq"),
        helper.make_node("Mul", ["h", "m3"], ["out"], name="mask"),
    ] + (extra_nodes or [])
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [emb, w, numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what today's onnxruntime loads
    return model


def _feed(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + seq)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq // 2:] = 0
    return {"input_ids": rng.integers(0, 50, (batch, seq)), "attention_mask": mask}


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "model.onnx"
    onnx.save(_toy_model(), str(path))
    return path


@pytest.fixture(scope="module")
def engine(toy_path) -> sparsejit.Engine:
    return sparsejit.compile(toy_path, batch_size=4, sequence_length=[8, 32])


def test_buckets_and_shapes(engine) -> None:
    assert engine.buckets == [(4, 8), (4, 32)]
    assert engine.input_names == ["input_ids", "attention_mask"]
    assert engine.output_names == ["out"]
    assert engine.input_shapes((4, 32)) == {"input_ids": (4, 32), "attention_mask": (4, 32)}
    assert engine.output_shapes((4, 8)) == {"out": (4, 8, HIDDEN)}


@pytest.mark.parametrize("batch,seq", [(1, 3), (4, 8), (2, 9), (3, 32)])
def test_padding_and_slicing_match_onnxruntime(engine, toy_path, batch, seq) -> None:
    feed = _feed(batch, seq)
    want = ort.InferenceSession(str(toy_path)).run(None, feed)[0]
    got = engine.run(feed)["out"]
    assert got.shape == (batch, seq, HIDDEN)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    (listed,) = engine([feed["input_ids"], feed["attention_mask"]])
    np.testing.assert_array_equal(listed, got)


def test_outputs_are_fresh_arrays(engine) -> None:
    a = engine.run(_feed(1, 4))["out"]
    snapshot = a.copy()
    engine.run(_feed(2, 4))
    np.testing.assert_array_equal(a, snapshot)


def test_int32_inputs_are_accepted(engine) -> None:
    feed = _feed(2, 5)
    got = engine.run({k: v.astype(np.int32) for k, v in feed.items()})["out"]
    np.testing.assert_array_equal(got, engine.run(feed)["out"])


@pytest.mark.parametrize("bad,error", [
    (lambda f: {"input_ids": f["input_ids"]}, InvalidInputError),
    (lambda f: {**f, "extra": f["input_ids"]}, InvalidInputError),
    (lambda f: {**f, "input_ids": f["input_ids"].astype(np.float32)}, InvalidInputError),
    (lambda f: {**f, "input_ids": f["input_ids"][0]}, InvalidInputError),
    (lambda f: {**f, "attention_mask": f["attention_mask"][:, :2]}, InvalidInputError),
    (lambda f: _feed(2, 33), SequenceTooLongError),
    (lambda f: _feed(5, 4), BatchTooLargeError),
])
def test_bad_inputs_raise_typed_errors(engine, bad, error) -> None:
    with pytest.raises(error) as info:
        engine.run(bad(_feed(2, 4)))
    assert str(info.value)


def test_several_batch_sizes_run_each_call_in_the_smallest_fitting_bucket(toy_path) -> None:
    engine = sparsejit.compile(toy_path, batch_size=[1, 4], sequence_length=[8, 32])
    assert engine.buckets == [(1, 8), (4, 8), (1, 32), (4, 32)]
    assert engine.sequence_lengths == [8, 32] and engine.batch_size == 4
    chosen = []
    original = engine._choose_bucket
    engine._choose_bucket = lambda b, s: chosen.append(original(b, s)) or chosen[-1]
    session = ort.InferenceSession(str(toy_path))
    for batch, seq in [(1, 3), (2, 8), (1, 20), (4, 32)]:
        feed = _feed(batch, seq)
        np.testing.assert_allclose(engine.run(feed)["out"], session.run(None, feed)[0], atol=1e-5, rtol=1e-5)
    assert [(b.batch, b.sequence) for b in chosen] == [(1, 8), (4, 8), (1, 32), (4, 32)]


def test_explicit_buckets_and_token_budget_buckets(toy_path) -> None:
    from sparsejit.errors import ShapeError
    from sparsejit.plan.buckets import token_budget_buckets

    assert token_budget_buckets([8, 32], 96) == [(1, 8), (2, 8), (4, 8), (8, 8), (12, 8), (1, 32), (2, 32),
                                                  (3, 32)]
    with pytest.raises(InvalidInputError, match="smaller than the sequence length 32"):
        token_budget_buckets([8, 32], 31)
    engine = sparsejit.compile(toy_path, buckets=[(6, 8), (2, 32)])
    assert engine.buckets == [(6, 8), (2, 32)]
    assert engine.max_batch(5) == 6 and engine.max_batch(9) == 2
    session = ort.InferenceSession(str(toy_path))
    for batch, seq in [(6, 8), (2, 30)]:
        feed = _feed(batch, seq)
        np.testing.assert_allclose(engine.run(feed)["out"], session.run(None, feed)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(BatchTooLargeError, match="batch size 2 at sequence length 32"):
        engine.run(_feed(3, 20))  # 3 rows fit the 8-position bucket's batch, not the 32 one's
    with pytest.raises(ShapeError, match="either buckets= or batch_size="):
        sparsejit.compile(toy_path, batch_size=2, buckets=[(2, 8)])


def test_list_call_checks_count(engine) -> None:
    with pytest.raises(InvalidInputError, match="expected 2 inputs"):
        engine([np.zeros((1, 4), np.int64)])


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no ONNX model file"):
        sparsejit.compile(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelLoadError):
        sparsejit.compile(junk)
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model")
    with pytest.raises(ModelLoadError):
        sparsejit.compile(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(_toy_model().SerializeToString()[:200])
    with pytest.raises(ModelLoadError):
        sparsejit.compile(truncated)


def test_external_data_and_missing_external_file(tmp_path) -> None:
    model = _toy_model()
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=64)
    engine = sparsejit.compile(path, batch_size=2, sequence_length=8)
    feed = _feed(2, 8)
    want = ort.InferenceSession(str(path)).run(None, feed)[0]
    np.testing.assert_allclose(engine.run(feed)["out"], want, atol=1e-5)
    before = (path.parent / "weights.bin").read_bytes()
    (path.parent / "weights.bin").rename(path.parent / "moved.bin")
    with pytest.raises(ExternalDataError, match="weights.bin"):
        sparsejit.compile(path)
    assert (path.parent / "moved.bin").read_bytes() == before  # never written


def test_unsupported_operator_is_named_at_compile_time() -> None:
    extra = [helper.make_node("Frobnicate", ["out"], ["z"], domain="com.example", name="weird_node")]
    model = _toy_model(extra)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    with pytest.raises(UnsupportedOperatorError) as info:
        sparsejit.compile(model)
    assert info.value.op_type == "Frobnicate"
    assert info.value.domain == "com.example"
    assert "weird_node" in str(info.value)


def test_standard_op_without_kernel_is_named() -> None:
    extra = [helper.make_node("Det", ["sq"], ["z"], name="determinant"),
             helper.make_node("Slice", ["out", "s0", "s1", "s2"], ["sq"], name="cut")]
    model = _toy_model(extra)
    for name, value in [("s0", [0, 0]), ("s1", [HIDDEN, HIDDEN]), ("s2", [1, 2])]:
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    with pytest.raises(UnsupportedOperatorError, match="Det.*determinant"):
        sparsejit.compile(model, batch_size=1, sequence_length=HIDDEN)


def test_user_model_file_is_not_modified(toy_path) -> None:
    before = toy_path.read_bytes()
    sparsejit.compile(toy_path, batch_size=1, sequence_length=[4, 8])
    assert toy_path.read_bytes() == before


_RSS_SCRIPT = """
import json, sys, gc, psutil, numpy as np
import sparsejit
before = psutil.Process().memory_info().rss
engine = sparsejit.compile(sys.argv[1], batch_size=1, sequence_length=json.loads(sys.argv[2]))
gc.collect()
rss = psutil.Process().memory_info().rss
print(json.dumps({"rss": rss, "added": rss - before}))
"""


def _rss(model: Path, buckets: list[int], key: str = "rss") -> int:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(model), json.dumps(buckets)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])[key]


def test_buckets_share_one_copy_of_the_weights() -> None:
    """Measured process memory: a second bucket costs its activations, not another weight copy."""
    from tests import zoo

    model = zoo.minilm_sentence_transformer() / "model.onnx"
    weights = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(model)).graph.initializer)
    _rss(model, [64])  # warm the kernel cache so both measurements load the same code
    one = _rss(model, [64])
    two = _rss(model, [64, 128])
    assert two - one < 0.3 * weights, (
        f"second bucket added {(two - one) / 2**20:.1f} MiB; weights are {weights / 2**20:.1f} MiB")


def test_weights_are_kept_once_in_packed_form() -> None:
    """Measured: compiling BERT-base adds about one copy of its fp32 weights, not the original plus
    the packed GEMM panels (which would be about twice)."""
    from tests import zoo

    model = zoo.random_encoder("bert-base") / "model.onnx"
    weights = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(model)).graph.initializer)
    _rss(model, [64])  # warm the kernel cache
    added = _rss(model, [64], key="added")
    assert added < 1.4 * weights, f"compile added {added / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB of weights"
