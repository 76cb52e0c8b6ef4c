"""Typed errors raised by sparsejit. Every message says what went wrong and what to do."""

from __future__ import annotations


class SparsejitError(Exception):
    """Base class of every error sparsejit raises on purpose."""


class ModelLoadError(SparsejitError):
    """The model file is missing, corrupt, not ONNX, or its external data cannot be read."""


class ModelIntegrityError(ModelLoadError):
    """A downloaded model file does not match its pinned digest: refused, nothing cached."""


class ExternalDataError(ModelLoadError):
    """A tensor's external-data file is missing or too short."""


class CheckpointError(ModelLoadError):
    """A Hugging Face checkpoint directory cannot be built: a config key or weight it names is missing,
    malformed or not supported (``key`` says which)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)


class UnsupportedOperatorError(SparsejitError):
    """The graph holds an operator sparsejit cannot compile (raised at compile time)."""

    def __init__(self, op_type: str, domain: str, node_name: str, detail: str = "") -> None:
        self.op_type = op_type
        self.domain = domain or "ai.onnx"
        self.node_name = node_name
        msg = f"unsupported operator {self.domain}::{op_type} at node {node_name!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class ShapeError(SparsejitError):
    """Shapes in the graph are inconsistent or cannot be made static for a bucket."""


class InvalidInputError(SparsejitError, ValueError):
    """Inputs given to an engine or pipeline have the wrong number, names, dtype or shape."""


class SequenceTooLongError(InvalidInputError):
    """An input is longer than the largest compiled sequence-length bucket."""


class BatchTooLargeError(InvalidInputError):
    """An input batch is larger than the engine's batch size."""


class CPUFeatureError(SparsejitError, RuntimeError):
    """The model, precision or target asked for needs an instruction-set feature this CPU lacks."""


class QuantizationRangeWarning(UserWarning):
    """A quantised model whose calibration made a rounding useless (e.g. a scale so large that every
    ordinary value rounds to zero): it runs, but its outputs lost their information in every engine."""


class TrainingUnavailableError(SparsejitError, RuntimeError):
    """Sparse fine-tuning was asked for but its optional dependencies (torch, transformers) are missing."""


class TrainingDataError(SparsejitError, ValueError):
    """A training or evaluation file cannot be read for the task (missing column, unknown label, bad row)."""
