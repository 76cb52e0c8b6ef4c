"""Threading helpers: the chunk size of one-at-a-time task hand-out is set and restored exactly."""

from __future__ import annotations

import numba
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
