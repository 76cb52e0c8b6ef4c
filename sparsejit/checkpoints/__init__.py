"""Hugging Face checkpoint directories (config.json + safetensors) compiled directly: no torch, no export.

The encoder is rebuilt from its config as an ONNX graph (`onnx.helper`, opset 17) whose initializers are
the checkpoint's own arrays. ONNX rather than sparsejit's IR because then the compiler sees exactly
the graph a user's export would give (every fusion applies), `sparsejit export` writes that very graph
for onnxruntime or OpenVINO, and onnxruntime can check it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from sparsejit.checkpoints.config import ARCHITECTURES, HEADS, EncoderConfig, read_config
from sparsejit.checkpoints.encoders import Inputs, embeddings, encoder, weight_prefix
from sparsejit.checkpoints.heads import add_head
from sparsejit.checkpoints.onnx_builder import OnnxBuilder, attach_weights
from sparsejit.checkpoints.weights import load_weights, weight_files
from sparsejit.errors import CheckpointError

__all__ = ["ARCHITECTURES", "HEADS", "BuiltModel", "CheckpointSource", "EncoderConfig", "build_checkpoint",
           "export_checkpoint", "is_checkpoint_dir", "read_config"]


@dataclass(frozen=True)
class CheckpointSource:
    """A checkpoint directory and the head to build (None: the one its config's `architectures` names)."""

    directory: Path
    head: str | None = None

    def __post_init__(self) -> None:
        if self.head is not None and self.head not in HEADS:
            raise CheckpointError(f"head must be one of {list(HEADS)}, got {self.head!r}")


@dataclass
class BuiltModel:
    """The encoder's ONNX graph (no tensor data) and its initializers, by name."""

    model: onnx.ModelProto
    initializers: dict[str, np.ndarray] = field(repr=False)
    config: EncoderConfig
    head: str

    def to_onnx(self) -> onnx.ModelProto:
        """A standard ONNX model holding its weights."""
        return attach_weights(self.model, self.initializers)


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """A directory with config.json and safetensors weights but no model.onnx."""
    path = Path(path)
    return (path.is_dir() and (path / "config.json").is_file() and not (path / "model.onnx").is_file()
            and any(path.glob("*.safetensors*")))


def build_checkpoint(source: CheckpointSource | str | os.PathLike) -> BuiltModel:
    """Build the ONNX graph of a checkpoint directory's encoder and head."""
    if not isinstance(source, CheckpointSource):
        source = CheckpointSource(Path(source))
    directory = Path(source.directory)
    cfg = read_config(directory)
    head = source.head or cfg.default_head()
    weight_files(directory)  # a missing or unreadable weight file fails before any work
    b = OnnxBuilder(load_weights(directory))
    p = weight_prefix(cfg, b)
    inputs = Inputs(token_type_ids="token_type_ids" if cfg.has_token_types else None)
    x = embeddings(b, cfg, p, inputs)
    h = encoder(b, cfg, p, x, b.additive_mask(inputs.attention_mask), inputs)
    outputs = add_head(b, cfg, p, head, h)
    names = [n for n in (inputs.input_ids, inputs.attention_mask, inputs.token_type_ids) if n]
    model = b.model(names, outputs, doc=f"{cfg.model_type} {head} built by sparsejit from {directory.name}")
    return BuiltModel(model, b.initializers, cfg, head)


def export_checkpoint(source: CheckpointSource | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the checkpoint's graph as a standard ONNX file (weights in a `.data` file beside it when the
    model exceeds protobuf's 2 GB limit). Never writes into the checkpoint directory."""
    built = build_checkpoint(source)
    out = Path(out)
    model = built.to_onnx()
    large = sum(a.nbytes for a in built.initializers.values()) > 1_800_000_000
    onnx.save_model(model, str(out), save_as_external_data=large, location=out.name + ".data")
    return out
