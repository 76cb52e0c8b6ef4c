"""Sparse fine-tuning: prune while fine-tuning a Hugging Face checkpoint, with distillation from the
dense model, then int8, exported as ONNX that sparsejit and onnxruntime both run.

Needs the optional extra ``pip install 'sparsejit[train]'`` (torch, transformers, onnxruntime for int8);
importing this package does not import torch: `finetune_sparse` checks for it and names the extra.
"""

from __future__ import annotations

import os
from typing import Any

from sparsejit.errors import TrainingUnavailableError
from sparsejit.training.recipe import TASKS, Distillation, Recipe

__all__ = ["TASKS", "Distillation", "Recipe", "TrainingUnavailableError", "finetune_sparse", "require_training"]

EXTRA_HINT = "pip install 'sparsejit[train]'"


def require_training() -> None:
    """Raise `TrainingUnavailableError` naming the extra when torch or transformers is missing."""
    missing = []
    for name in ("torch", "transformers"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise TrainingUnavailableError(f"sparse fine-tuning needs {' and '.join(missing)}, which sparsejit does not "
                                       f"install by default: {EXTRA_HINT}")


def finetune_sparse(model_dir: str | os.PathLike, output: str | os.PathLike, train_file: str | os.PathLike,
                    recipe: Recipe | None = None, **kwargs: Any) -> Any:
    """Fine-tune and prune `model_dir` on `train_file` under `recipe`, writing `output` (.onnx or a directory).

    Returns a `FinetuneReport`; keyword arguments as `sparsejit.training.run.finetune_sparse`.
    """
    require_training()
    from sparsejit.training.run import finetune_sparse as run

    return run(model_dir, output, train_file, recipe or Recipe(), **kwargs)
