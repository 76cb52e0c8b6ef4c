"""Per-task losses: cross-entropy on the labels plus KL divergence to the dense teacher's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsejit.training.recipe import Distillation

__all__ = ["soft_loss", "task_loss"]

_NEG = -1e4  # logit of padded positions (QA spans), so they take no probability


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
              weight_mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) over the last axis, averaged over the rest
    (over the positions where `weight_mask` is true)."""
    t = temperature
    log_p = F.log_softmax(student / t, dim=-1)
    q = F.softmax(teacher / t, dim=-1)
    kl = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(-1)
    if weight_mask is not None:
        kl = kl[weight_mask]
    return kl.mean() * t * t


def task_loss(task: str, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
              distill: Distillation) -> torch.Tensor:
    """The training loss of one batch; `batch` holds targets and (when distilling) `teacher_*` logits."""
    hard_w, soft_w, t = distill.hard_weight, distill.soft_weight, distill.temperature
    soft_w = soft_w if any(k.startswith("teacher") for k in batch) else 0.0
    loss = torch.zeros(())
    if task == "text_classification":
        logits = outputs["logits"]
        if hard_w:
            loss = loss + hard_w * F.cross_entropy(logits, batch["labels"])
        if soft_w:
            loss = loss + soft_w * soft_loss(logits, batch["teacher_logits"], t)
    elif task == "token_classification":
        logits = outputs["logits"]
        if hard_w:
            loss = loss + hard_w * F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        if soft_w:
            loss = loss + soft_w * soft_loss(logits, batch["teacher_logits"], t, batch["attention_mask"].bool())
    else:
        real = batch["attention_mask"].bool()
        start = outputs["start_logits"].masked_fill(~real, _NEG)
        end = outputs["end_logits"].masked_fill(~real, _NEG)
        if hard_w:
            loss = loss + hard_w * (F.cross_entropy(start, batch["start_positions"])
                                    + F.cross_entropy(end, batch["end_positions"])) / 2
        if soft_w:
            loss = loss + soft_w * (soft_loss(start, batch["teacher_start"].masked_fill(~real, _NEG), t)
                                    + soft_loss(end, batch["teacher_end"].masked_fill(~real, _NEG), t)) / 2
    return loss
