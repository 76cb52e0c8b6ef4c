"""sparsejit: JIT-compile transformer ONNX models into Numba CPU kernels."""

from __future__ import annotations

from sparsejit.errors import (
    BatchTooLargeError,
    CheckpointError,
    CPUFeatureError,
    ExternalDataError,
    InvalidInputError,
    ModelIntegrityError,
    ModelLoadError,
    SequenceTooLongError,
    ShapeError,
    SparsejitError,
    UnsupportedOperatorError,
)

__version__ = "0.1.0"


def _route_numba_cache() -> None:
    # Numba caches our hand-written kernels beside their source (site-packages may be read-only) unless
    # told otherwise; send them where the generated kernels go, so SPARSEJIT_CACHE_DIR covers all.
    # Numba checks only the cached function's own file, not the intrinsics and helpers it inlined from
    # other files (simd.py, ...): the directory is keyed by a hash of every kernel source, so editing
    # any of them can never leave a stale compiled kernel in use.
    import hashlib
    import os
    from pathlib import Path

    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    import numba

    from sparsejit.kernels.codegen import cache_root
    from sparsejit.kernels.target import host_target

    sources = sorted((Path(__file__).parent / "kernels").glob("*.py"))
    digest = hashlib.sha1(b"".join(p.name.encode() + p.read_bytes() for p in sources)
                          + host_target().cache_tag.encode()).hexdigest()[:12]
    numba.config.CACHE_DIR = str(cache_root() / "numba" / digest)


def _narrow_numba_codegen() -> None:
    from sparsejit.kernels.target import narrow_numba_codegen

    narrow_numba_codegen()


_narrow_numba_codegen()
_route_numba_cache()

from sparsejit.plan.engine import Engine, compile  # noqa: E402  (needs __version__ for the cache key)

__all__ = [
    "BatchTooLargeError",
    "CheckpointError",
    "CPUFeatureError",
    "Engine",
    "compile",
    "ExternalDataError",
    "InvalidInputError",
    "ModelIntegrityError",
    "ModelLoadError",
    "SequenceTooLongError",
    "ShapeError",
    "SparsejitError",
    "UnsupportedOperatorError",
    "__version__",
]


def __getattr__(name: str):  # lazy: importing sparsejit must not load the task pipelines
    if name == "Pipeline":
        from sparsejit.tasks.base import Pipeline

        return Pipeline
    raise AttributeError(f"module 'sparsejit' has no attribute {name!r}")
