"""The recipe of a sparse fine-tuning run: everything needed to repeat it, read from and written to YAML."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TASKS", "QUANTIZE_MODES", "Distillation", "Recipe", "file_sha256", "task_of"]

TASKS = ("text_classification", "token_classification", "question_answering")
QUANTIZE_MODES = ("none", "dynamic", "static")
SCHEDULES = ("cubic", "linear")



@dataclass
class Distillation:
    """Loss = hard_weight · CE(labels) + soft_weight · T² · KL(teacher ‖ student at temperature T)."""

    hard_weight: float = 0.5
    soft_weight: float = 0.5
    temperature: float = 2.0


@dataclass
class Recipe:
    """Schedule, structure, distillation and optimiser settings of one run (epochs may be fractional)."""

    task: str = "text_classification"
    sparsity: float = 0.8
    structure: str = "4x16"
    scope: str = "per_layer"
    schedule: str = "cubic"
    initial_sparsity: float = 0.0
    epochs: float = 10.0
    prune_start_epoch: float = 0.0
    prune_end_epoch: float = 6.0
    prune_updates_per_epoch: int = 8
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    batch_size: int = 32
    max_length: int = 128
    doc_stride: int = 128
    answerable_only: bool = False  # QA: drop unanswerable questions from training (a teacher that never abstains)
    seed: int = 42
    quantize: str = "dynamic"
    num_calibration: int = 256
    distillation: Distillation = field(default_factory=Distillation)
    # provenance: what the run read (paths as given, the training file's hash)
    model: str = ""
    train_file: str = ""
    train_sha256: str = ""
    eval_file: str = ""
    eval_split: float = 0.0
    teacher: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.distillation, dict):
            self.distillation = Distillation(**self.distillation)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise ValueError(f"initial_sparsity must be in [0, sparsity], got {self.initial_sparsity}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.scope not in ("per_layer", "global"):
            raise ValueError(f"scope must be per_layer or global, got {self.scope!r}")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {self.quantize!r}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not 0.0 <= self.prune_start_epoch <= self.prune_end_epoch <= self.epochs:
            raise ValueError("need 0 <= prune_start_epoch <= prune_end_epoch <= epochs, got "
                             f"{self.prune_start_epoch}, {self.prune_end_epoch}, {self.epochs}")
        if self.batch_size < 1 or self.max_length < 8 or self.prune_updates_per_epoch < 1:
            raise ValueError("batch_size >= 1, max_length >= 8 and prune_updates_per_epoch >= 1 are required")
        if not 0.0 <= self.eval_split < 1.0:
            raise ValueError(f"eval_split must be in [0, 1), got {self.eval_split}")
        d = self.distillation
        if d.hard_weight < 0 or d.soft_weight < 0 or d.hard_weight + d.soft_weight <= 0 or d.temperature <= 0:
            raise ValueError("distillation weights must be >= 0 with a positive sum, temperature > 0")

    def training_settings(self) -> dict[str, Any]:
        """Everything that changes the trained weights (what a checkpoint must match to be resumed)."""
        data = dataclasses.asdict(self)
        for key in ("quantize", "num_calibration", "eval_file"):
            data.pop(key)
        for key in ("model", "train_file", "teacher"):  # the same files however the command names them
            data[key] = os.path.abspath(data[key]) if data[key] else ""
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text("# sparsejit sparse fine-tuning recipe: `sparsejit sparsify MODEL OUT --recipe THIS`\n"
                        + self.to_yaml())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        """Read a recipe YAML; unknown keys are an error (a typo must not silently fall back to a default)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe is a YAML mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown recipe keys {unknown} (known: {sorted(known)})")
        if isinstance(data.get("distillation"), dict):
            dknown = {f.name for f in dataclasses.fields(Distillation)}
            bad = sorted(set(data["distillation"]) - dknown)
            if bad:
                raise ValueError(f"{path}: unknown distillation keys {bad} (known: {sorted(dknown)})")
        return cls(**data)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def task_of(model_dir: str | os.PathLike) -> str | None:
    """The task a checkpoint's head was trained for (config.json `architectures`), or None."""
    from sparsejit.checkpoints.config import head_of_architectures
    from sparsejit.training.heads import task_head

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    head = head_of_architectures(config.get("architectures") or [])
    return next((task for task in TASKS if task_head(task) == head), None)
