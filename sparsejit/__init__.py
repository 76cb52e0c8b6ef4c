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

__all__ = [
    "BatchTooLargeError",
    "ExternalDataError",
    "InvalidInputError",
    "ModelLoadError",
    "SequenceTooLongError",
    "ShapeError",
    "SparsejitError",
    "UnsupportedOperatorError",
    "__version__",
]
