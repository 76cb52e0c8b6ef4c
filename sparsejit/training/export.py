"""From the fine-tuned torch model to the files users run: a checkpoint directory, its ONNX export
(sparsejit's own builder, the graph `sparsejit export` writes), an int8 version, and a check that the
pruned weights are exactly zero in the requested block structure in every file written."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from sparsejit.checkpoints import CheckpointSource, export_checkpoint
from sparsejit.graph.sparsity import block_nonzero
from sparsejit.sparsify import find_prunable, parse_structure
from sparsejit.training.heads import task_head

__all__ = ["TOKENIZER_FILES", "WeightStructure", "copy_tokenizer_files", "export_onnx", "save_checkpoint",
           "weight_structure"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "modules.json")


@dataclass(frozen=True)
class WeightStructure:
    """One projection weight of an exported file: its [K, N] shape, element sparsity, and the fraction of
    its blocks (of the requested structure) that are entirely zero."""

    name: str
    shape: tuple[int, int]
    blocks: int
    sparsity: float
    block_sparsity: float

    def meets(self, target: float) -> bool:
        """At least `target` of the blocks are all zero (the target rounded to whole blocks)."""
        return self.block_sparsity >= target - 0.5 / self.blocks - 1e-9


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def save_checkpoint(model: object, tokenizer_dir: Path, out_dir: Path) -> Path:
    """`save_pretrained` (safetensors) plus the source's tokenizer files: a checkpoint sparsejit and
    transformers both load."""
    model.save_pretrained(out_dir, safe_serialization=True)  # type: ignore[attr-defined]
    copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


def export_onnx(checkpoint_dir: Path, task: str, out: Path) -> Path:
    """The checkpoint as ONNX with the task's head (sparsejit's builder: no torch exporter involved)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_checkpoint(CheckpointSource(checkpoint_dir, task_head(task)), out)


def _int8_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """int8 product weights of quantised forms: MatMulInteger B, and DequantizeLinear of an int8 initializer
    feeding a MatMul (QDQ)."""
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        name = None
        if node.op_type == "MatMulInteger" and node.input[1] in inits:
            name = node.input[1]
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            name = node.input[0]
        if name is not None:
            arr = numpy_helper.to_array(inits[name])
            if arr.ndim == 2 and arr.dtype in (np.int8, np.uint8):
                found[name] = arr
    return found


def weight_structure(path: Path, structure: str, fp32_names: list[str] | None = None) -> list[WeightStructure]:
    """Sparsity and block density (in `structure`) of the encoder projections of an ONNX file: its fp32
    MatMul weights (heads and embeddings excluded) or, for an int8 file, the int8 product weights quantised
    from `fp32_names` (onnxruntime names them ``<fp32 name>_quantized``)."""
    model = onnx.load(str(path))
    r, c = parse_structure(structure)
    weights = _int8_weights(model)
    if weights:
        if fp32_names is None:
            raise ValueError("an int8 file needs the fp32 projection names (fp32_names) to tell them from heads")
        weights = {n: w for n, w in weights.items() if any(n.startswith(f + "_") for f in fp32_names)}
    else:
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        prunable, _ = find_prunable(model)
        weights = {p.name: p.kn(inits) for p in prunable}
    out = []
    for name, w in weights.items():
        nonzero = block_nonzero(w, (r, c))
        out.append(WeightStructure(name, (int(w.shape[0]), int(w.shape[1])), int(nonzero.size),
                                   float(1.0 - np.count_nonzero(w) / w.size), float(1.0 - nonzero.mean())))
    return out
