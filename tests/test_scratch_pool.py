"""ScratchPool: one plan's per-step working memory, shared between steps."""

import numpy as np

from sparsejit.plan.lowering import ScratchPool


def _span(a: np.ndarray) -> tuple[int, int]:
    start = a.ctypes.data
    return start, start + a.nbytes


def test_requests_of_one_step_are_disjoint_and_aligned() -> None:
    pool = ScratchPool()
    pool.begin_step()
    arrays = [pool.take((5, 7), np.float32), pool.take((3,), np.int32), pool.take((2, 9), np.float64)]
    spans = sorted(_span(a) for a in arrays)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert all(a.ctypes.data % 64 == 0 for a in arrays)
    assert [a.shape for a in arrays] == [(5, 7), (3,), (2, 9)]
    assert [a.dtype for a in arrays] == [np.float32, np.int32, np.float64]


def test_later_steps_reuse_the_memory_of_earlier_ones() -> None:
    pool = ScratchPool()
    pool.begin_step()
    first = pool.take((1000,), np.float32)
    pool.begin_step()
    second = pool.take((500,), np.float32)
    assert np.shares_memory(first, second)


def test_a_request_that_does_not_fit_leaves_earlier_steps_their_memory() -> None:
    pool = ScratchPool()
    pool.begin_step()
    small = pool.take((10,), np.float32)
    small[:] = 1.0
    pool.begin_step()
    big = pool.take((100_000,), np.float32)
    big[:] = 2.0
    assert not np.shares_memory(small, big)
    assert (small == 1.0).all()
