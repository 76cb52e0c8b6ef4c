"""Threading helpers: the chunk size of one-at-a-time task hand-out is set and restored exactly."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from sparsejit.kernels.threading import dynamic_tasks, run_dynamic_tasks


def test_chunk_size_is_one_inside_and_restored_after() -> None:
    seen: list[tuple[str, int]] = []
    numba.set_parallel_chunksize(3)
    try:
        run_dynamic_tasks(lambda tag: seen.append((tag, numba.get_parallel_chunksize())), "call")
        assert numba.get_parallel_chunksize() == 3
        with pytest.raises(RuntimeError), dynamic_tasks():
            seen.append(("block", numba.get_parallel_chunksize()))
            raise RuntimeError("a kernel failed")
        assert numba.get_parallel_chunksize() == 3  # restored on the error path too
    finally:
        numba.set_parallel_chunksize(0)
    assert seen == [("call", 1), ("block", 1)]


def test_kernels_are_chosen_under_the_engines_thread_count(tmp_path, monkeypatch) -> None:
    """A 1-thread engine times its kernel candidates on 1 thread (and keys the decision by it), whatever
    the compiling thread's own count, which is restored afterwards."""
    import numba
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    import sparsejit
    from sparsejit.plan import kernel_choice

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32) * (rng.random((64, 64)) < 0.1)  # sparse: timed
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])], [nh.from_array(w, "w")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), tmp_path / "m.onnx")
    seen: list[int] = []
    timed = kernel_choice.time_candidates

    def spy(runs):  # type: ignore[no-untyped-def]
        seen.append(numba.get_num_threads())
        return timed(runs)

    monkeypatch.setattr(kernel_choice, "time_candidates", spy)
    monkeypatch.setattr(kernel_choice, "read_decision", lambda key: None)
    before = numba.get_num_threads()
    engine = sparsejit.compile(str(tmp_path / "m.onnx"), input_shapes={"x": (8, 64)}, num_threads=1)
    assert seen and set(seen) == {1}
    assert numba.get_num_threads() == before
    x = rng.standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_allclose(engine.run({"x": x})["y"], x @ w, rtol=1e-4, atol=1e-4)
