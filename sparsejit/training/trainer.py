"""The fine-tuning loop: length-grouped batches, AdamW with warm-up and linear decay, gradual pruning,
distillation from precomputed teacher logits, and a resumable checkpoint at the end of every epoch."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sparsejit.training.data import IGNORE, Feature
from sparsejit.training.distillation import task_loss
from sparsejit.training.metrics import padded_batch
from sparsejit.training.pruning import BlockPruner, target_sparsity
from sparsejit.training.recipe import Recipe

__all__ = ["EpochRecord", "Trainer", "batches", "collate", "model_inputs", "teacher_outputs"]

CHECKPOINT = "checkpoint.pt"


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    sparsity: float
    metric: float | None = None


def batches(features: Sequence[Feature], batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Index batches of similar lengths (sorted within windows of 50 batches; batch order shuffled)."""
    idx = np.arange(len(features))
    if shuffle:
        idx = np.random.default_rng(seed).permutation(len(features))
    window = batch_size * 50
    out = []
    for w0 in range(0, len(idx), window):
        chunk = sorted(idx[w0:w0 + window].tolist(), key=lambda i: len(features[i].input_ids))
        out += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    if shuffle:
        order = np.random.default_rng(seed + 1).permutation(len(out))
        out = [out[i] for i in order]
    return out


def collate(features: Sequence[Feature], task: str, pad_id: int,
            teacher: dict[str, list[torch.Tensor]] | None = None, indices: Sequence[int] | None = None
            ) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest feature; add targets and the teacher's logits of these features."""
    out = {k: torch.from_numpy(v) for k, v in padded_batch(features, pad_id).items()}
    n, length = out["input_ids"].shape
    if task == "text_classification":
        out["labels"] = torch.tensor([f.label for f in features], dtype=torch.long)
    elif task == "token_classification":
        labels = torch.full((n, length), IGNORE, dtype=torch.long)
        for b, f in enumerate(features):
            labels[b, :len(f.labels)] = torch.from_numpy(f.labels)
        out["labels"] = labels
    else:
        out["start_positions"] = torch.tensor([f.start for f in features], dtype=torch.long)
        out["end_positions"] = torch.tensor([f.end for f in features], dtype=torch.long)
    if teacher is not None and indices is not None:
        for key, per_feature in teacher.items():
            rows = [per_feature[i] for i in indices]
            if task == "text_classification":  # one logit vector per example
                out[key] = torch.stack(rows)
            else:
                pad = torch.zeros((n, length, *rows[0].shape[1:]), dtype=rows[0].dtype)
                for b, r in enumerate(rows):
                    pad[b, :r.shape[0]] = r
                out[key] = pad
    return out


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs of `batch` the model's forward accepts (DistilBERT and MPNet take no token types)."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
            and k in accepted}


def _outputs(task: str, result: Any) -> dict[str, torch.Tensor]:
    if task == "question_answering":
        return {"start_logits": result.start_logits, "end_logits": result.end_logits}
    return {"logits": result.logits}


@torch.no_grad()
def teacher_outputs(teacher: torch.nn.Module, features: Sequence[Feature], task: str, pad_id: int,
                    batch_size: int = 64) -> dict[str, list[torch.Tensor]]:
    """The teacher's logits for every feature (unpadded), computed once: the teacher never changes."""
    teacher.eval()
    keys = {"text_classification": ("teacher_logits",), "token_classification": ("teacher_logits",),
            "question_answering": ("teacher_start", "teacher_end")}[task]
    out: dict[str, list[torch.Tensor]] = {k: [None] * len(features) for k in keys}  # type: ignore[list-item]
    for chunk in tqdm(batches(features, batch_size, 0, shuffle=False), desc="teacher logits", leave=False):
        batch = collate([features[i] for i in chunk], task, pad_id)
        res = _outputs(task, teacher(**model_inputs(teacher, batch)))
        values = list(res.values())
        for b, i in enumerate(chunk):
            k = len(features[i].input_ids)
            for key, v in zip(keys, values, strict=True):
                out[key][i] = v[b].clone() if task == "text_classification" else v[b, :k].clone()
    return out


@dataclass
class Trainer:
    """Fine-tunes `model` in place under `recipe`, pruning as the schedule says."""

    model: torch.nn.Module
    recipe: Recipe
    features: Sequence[Feature]
    pad_id: int
    work_dir: Path
    teacher: dict[str, list[torch.Tensor]] | None = None
    evaluate: Callable[[torch.nn.Module], float] | None = None
    metric_name: str = "accuracy"
    progress: bool = True
    history: list[EpochRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        r = self.recipe
        self.pruner = BlockPruner(self.model, r.structure, r.scope)
        self.steps_per_epoch = math.ceil(len(self.features) / r.batch_size)
        self.total_steps = max(1, math.ceil(r.epochs * self.steps_per_epoch))
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=r.learning_rate)
        warmup = int(r.warmup_fraction * self.total_steps)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        self.prune_every = max(1, self.steps_per_epoch // r.prune_updates_per_epoch)

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "masks": self.pruner.state_dict(),
                    "step": self.step, "settings": self.recipe.training_settings(),
                    "history": [vars(h) for h in self.history]}, tmp)
        os.replace(tmp, path)
        return path

    def try_resume(self) -> bool:
        """Load the work directory's checkpoint when it was made by the same settings; True if resumed."""
        path = self.work_dir / CHECKPOINT
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("settings") != self.recipe.training_settings():
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.pruner.load_state_dict(state["masks"])
        self.step = int(state["step"])
        self.history = [EpochRecord(**h) for h in state["history"]]
        return True

    # ----------------------------------------------------------------------------------- training
    def _maybe_prune(self) -> None:
        r = self.recipe
        epoch = self.step / self.steps_per_epoch
        if r.sparsity == 0 or epoch < r.prune_start_epoch:
            return
        at_end = epoch >= r.prune_end_epoch
        if self.step % self.prune_every and not at_end:
            return
        due = target_sparsity(epoch, r.prune_start_epoch, r.prune_end_epoch, r.initial_sparsity, r.sparsity,
                              r.schedule)
        if due > self.pruner.sparsity() + 1e-6:
            self.pruner.prune_to(due)

    def train(self) -> list[EpochRecord]:
        """Run the remaining steps; checkpoint after every epoch. Returns the per-epoch history."""
        r = self.recipe
        self.model.train()
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            torch.manual_seed(r.seed + epoch)
            order = batches(self.features, r.batch_size, r.seed + epoch)
            first = self.step - epoch * self.steps_per_epoch
            last = min(len(order), self.total_steps - epoch * self.steps_per_epoch)
            bar = tqdm(range(first, last), desc=f"epoch {epoch + 1}/{math.ceil(r.epochs)}", disable=not self.progress)
            losses = []
            for b in bar:
                self._maybe_prune()
                chunk = order[b]
                batch = collate([self.features[i] for i in chunk], r.task, self.pad_id, self.teacher, chunk)
                out = _outputs(r.task, self.model(**model_inputs(self.model, batch)))
                loss = task_loss(r.task, out, batch, r.distillation)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.pruner.apply()
                self.step += 1
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", sparsity=f"{self.pruner.sparsity():.3f}",
                                lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            self._maybe_prune()
            metric = None
            if self.evaluate is not None:
                metric = self.evaluate(self.model)
                self.model.train()
            record = EpochRecord(epoch + 1, float(np.mean(losses)) if losses else float("nan"),
                                 self.pruner.sparsity(), metric)
            self.history.append(record)
            if self.progress:
                shown = f", {self.metric_name} {metric:.4f}" if metric is not None else ""
                tqdm.write(f"epoch {record.epoch}: loss {record.loss:.4f}, sparsity {record.sparsity:.3f}{shown}")
            self.save_checkpoint()
        self.model.eval()
        return self.history
