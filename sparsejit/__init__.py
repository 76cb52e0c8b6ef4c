"""sparsejit: JIT-compile transformer ONNX models into Numba CPU kernels."""

from __future__ import annotations

from sparsejit.errors import (
    BatchTooLargeError,
    ExternalDataError,
    InvalidInputError,
    ModelLoadError,
    SequenceTooLongError,
    ShapeError,
    SparsejitError,
    UnsupportedOperatorError,
)

__version__ = "0.1.0"

from sparsejit.plan.engine import Engine, compile  # noqa: E402  (needs __version__ for the cache key)

__all__ = [
    "BatchTooLargeError",
    "Engine",
    "compile",
    "ExternalDataError",
    "InvalidInputError",
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
