"""What a sparse fine-tuning run reports: scores dense / one-shot / fine-tuned, per-layer structure, speed."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsejit.training.export import WeightStructure
from sparsejit.training.recipe import Recipe

__all__ = ["FinetuneReport", "ScoreRow"]


def _short(name: str) -> str:
    """``bert.encoder.layer.0.attention.self.query.weight/transposed_quantized`` -> ``layer.0.attention.self.query``."""
    name = re.sub(r"\.weight.*$", "", name)
    return re.sub(r"^.*?\bencoder\.|^.*?\btransformer\.", "", name)


@dataclass
class ScoreRow:
    model: str
    sparsity: float
    score: float


@dataclass
class FinetuneReport:
    """The run's outcome; `format()` is what the command prints, `to_json()` what it writes beside the model."""

    output: Path
    recipe_path: Path
    task: str
    metric_name: str
    recipe: Recipe
    layers: list[WeightStructure] = field(default_factory=list)
    rows: list[ScoreRow] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    speed_models: tuple[str, str] = ("dense", "sparse")
    train_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of the projection weights lying in all-zero blocks."""
        total = sum(w.shape[0] * w.shape[1] for w in self.layers)
        return sum(w.block_sparsity * w.shape[0] * w.shape[1] for w in self.layers) / max(1, total)

    def format(self) -> str:
        from sparsejit.kernels.target import host_target

        structure = self.recipe.structure
        lines = [f"{'weight':<44} {'[K, N]':>11} {'zeros':>6} {structure + ' blocks zero':>16}"]
        for w in self.layers:
            lines.append(f"{_short(w.name)[-44:]:<44} {w.shape[0]:>5}x{w.shape[1]:<5} {w.sparsity:6.3f} "
                         f"{w.block_sparsity:16.3f}")
        lines.append(f"projection weights: {self.sparsity:.3f} of their {structure} blocks entirely zero")
        if self.history:
            lines.append("epochs: " + "; ".join(
                f"{h['epoch']}: loss {h['loss']:.4f} sparsity {h['sparsity']:.3f}"
                + (f" {self.metric_name} {h['metric']:.4f}" if h.get("metric") is not None else "")
                for h in self.history))
        if self.rows:
            lines.append(f"\n{'model':<52} {'sparsity':>8} {self.metric_name:>16}")
            for r in self.rows:
                lines.append(f"{r.model:<52} {r.sparsity:8.3f} {r.score:16.4f}")
        if self.speed:
            dense, sparse = self.speed_models
            lines.append(f"\nsparsejit on {host_target().cpu}, median ms per batch ({dense} vs {sparse}):")
            for (b, s), t in self.speed.items():
                lines.append(f"  batch {b} x seq {s}: {t['dense']:.2f} vs {t['sparse']:.2f} ms "
                             f"({t['dense'] / t['sparse']:.2f}x)")
        lines.append(f"\ntraining {self.train_seconds / 60:.1f} min, whole run {self.total_seconds / 60:.1f} min")
        lines.append(f"written: {self.output} (recipe: {self.recipe_path})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        from sparsejit.kernels.target import host_target

        return {"output": str(self.output), "task": self.task, "metric": self.metric_name,
                "recipe": dataclasses.asdict(self.recipe), "sparsity": self.sparsity,
                "layers": [dataclasses.asdict(w) for w in self.layers],
                "scores": [dataclasses.asdict(r) for r in self.rows], "history": self.history,
                "speed_ms": [{"batch": b, "sequence_length": s, **t} for (b, s), t in self.speed.items()],
                "speed_models": list(self.speed_models), "cpu": host_target().cpu,
                "train_seconds": self.train_seconds, "total_seconds": self.total_seconds}
