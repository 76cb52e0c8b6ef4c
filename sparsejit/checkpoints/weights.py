"""Weights of a Hugging Face checkpoint, read with `safetensors` (numpy backend), as float32 arrays."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers numpy's bfloat16, which safetensors' numpy backend needs)
import numpy as np
from safetensors import SafetensorError, safe_open

from sparsejit.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
_FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a checkpoint: one file, or the shards its index names."""
    directory = Path(directory)
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    index = directory / SHARD_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read the shard index {index}: {exc}") from exc
        shards = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(s.name) for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not in {directory}: {missing}")
        return shards
    found = sorted(p.name for p in directory.glob("*.safetensors"))
    if len(found) == 1:
        return [directory / found[0]]
    raise CheckpointError(f"no {SINGLE_FILE} or {SHARD_INDEX} in {directory} (found {found}); only "
                          "safetensors checkpoints are read (save with safe_serialization=True)")


def _tensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        with safe_open(str(path), framework="np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read weights from {path}: {exc}") from exc


def load_weights(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint by name; float16 / bfloat16 ones widened to float32.

    TensorFlow-era LayerNorm names (`gamma`, `beta`) are renamed as transformers does on load.
    """
    weights: dict[str, np.ndarray] = {}
    for path in weight_files(directory):
        for name, array in _tensors(path):
            if array.dtype.name in _FLOAT_DTYPES:
                array = np.ascontiguousarray(array, dtype=np.float32)
            if name.endswith(".gamma"):
                name = name[: -len("gamma")] + "weight"
            elif name.endswith(".beta"):
                name = name[: -len("beta")] + "bias"
            weights[name] = array
    return weights

