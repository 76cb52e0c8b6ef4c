"""Choose and configure Numba's threading layer once, before any parallel kernel runs.

OpenMP's barrier costs milliseconds per parallel region on this class of machine (a preempted
thread stalls it for a scheduler tick), so sparsejit prefers TBB, whose launch costs microseconds and
which is safe to call from several Python threads at once. TBB's shared library ships in the `tbb`
wheel under `<prefix>/lib`, where Numba does not look, so it is loaded by path here: users set no
environment variable.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numba

_configured = False


def _preload_tbb() -> bool:
    for prefix in {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))}:
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libtbb.so.12*"))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def configure_threading() -> str:
    """Select the threading layer (TBB if loadable, else workqueue). Returns the requested layer."""
    global _configured
    if not _configured:
        _configured = True
        if os.environ.get("NUMBA_THREADING_LAYER"):
            return numba.config.THREADING_LAYER
        _preload_tbb()
        try:
            from numba.np.ufunc import tbbpool  # noqa: F401

            numba.config.THREADING_LAYER = "tbb"
        except ImportError:
            numba.config.THREADING_LAYER = "workqueue"
    return numba.config.THREADING_LAYER


def set_threads(num_threads: int | None) -> int:
    """Set the Numba thread count for the calling thread (None = all cores). Returns it."""
    configure_threading()
    n = numba.config.NUMBA_NUM_THREADS if num_threads is None else max(1, min(int(num_threads),
                                                                          numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


@contextmanager
def thread_count(num_threads: int | None) -> Iterator[int]:
    """Within the block the calling thread runs parallel kernels on `num_threads` (None: all cores), so
    kernels timed or sized in it are timed and sized for that count; the previous count is restored."""
    configure_threading()
    old = numba.get_num_threads()
    n = set_threads(num_threads)
    try:
        yield n
    finally:
        numba.set_num_threads(old)


_raw_set_chunksize: Any = None


def _set_chunksize(n: int) -> int:
    global _raw_set_chunksize
    if _raw_set_chunksize is None:
        old = numba.set_parallel_chunksize(n)  # public entry: launches the thread pool first
        from numba.np.ufunc import parallel

        # the pool's own setter, bound once the pool runs: the public wrapper takes two locks per call
        # (~2.5 us of the ~4 us a set/restore pair costs); absent in another numba, keep the public one
        _raw_set_chunksize = getattr(parallel, "_set_parallel_chunksize", None) or numba.set_parallel_chunksize
        return old
    return int(_raw_set_chunksize(n))


@contextmanager
def dynamic_tasks() -> Iterator[None]:
    """Within the block, `prange` iterations are handed out one at a time (see `run_dynamic_tasks`)."""
    old = _set_chunksize(1)
    try:
        yield
    finally:
        _set_chunksize(old)


def run_dynamic_tasks(kernel: Callable[..., Any], *args: Any) -> None:
    """Call a `prange` kernel with its iterations handed out one at a time (chunk size 1), so a busy
    core takes fewer of them than an idle one; the calling thread's chunk size is restored after."""
    old = _set_chunksize(1)
    try:
        kernel(*args)
    finally:
        _set_chunksize(old)
