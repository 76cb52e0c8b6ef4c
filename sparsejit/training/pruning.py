"""Gradual block magnitude pruning of a torch encoder's projection weights.

Structures are written ``RxC`` on the [K, N] weight of ``y = x @ W`` as everywhere in sparsejit (R
consecutive inputs × C consecutive outputs: ``4x16`` for the int8 block kernels, ``1x16`` for fp32);
a ``torch.nn.Linear`` stores Wᵀ ([N, K]), so a block there is C rows × R columns. Blocks are scored by
their mean square and the lowest go first; a pruned block stays zero (its weights are re-masked after
every optimiser step), so the mask only grows, on a cubic schedule (Zhu & Gupta 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsejit.sparsify import parse_structure

__all__ = ["BlockPruner", "target_sparsity", "prunable_linears"]

_HEAD_PARTS = ("pooler", "classifier", "qa_outputs", "pre_classifier", "lm_head", "score")


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The encoder's projections (attention, feed-forward): every Linear outside embeddings and heads."""
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if any(p in _HEAD_PARTS for p in parts) or "embeddings" in parts or "embeddings_project" in parts:
            continue
        found[name] = module
    return found


def target_sparsity(epoch: float, start: float, end: float, initial: float, final: float,
                    schedule: str = "cubic") -> float:
    """Sparsity due at `epoch`: `initial` until `start`, `final` from `end`, cubic (or linear) between."""
    if epoch < start:
        return 0.0
    if epoch >= end or end <= start:
        return final
    progress = (epoch - start) / (end - start)
    if schedule == "linear":
        return initial + (final - initial) * progress
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass
class _Layer:
    module: nn.Linear
    mask: torch.Tensor  # bool, same shape as the weight; True = kept


class BlockPruner:
    """Masks of the prunable Linears; `prune_to(s)` grows them, `apply()` re-zeroes the pruned weights."""

    def __init__(self, model: nn.Module, structure: str, scope: str = "per_layer") -> None:
        self.r, self.c = parse_structure(structure)  # along K (inputs), along N (outputs)
        self.scope = scope
        self.layers = {name: _Layer(m, torch.ones_like(m.weight, dtype=torch.bool))
                       for name, m in prunable_linears(model).items()}
        if not self.layers:
            raise ValueError("no prunable Linear layers found in the model")

    def _block_scores(self, w: torch.Tensor) -> torch.Tensor:
        """Mean square per block, [ceil(N/C), ceil(K/R)] (edge blocks averaged over their real entries)."""
        n, k = w.shape
        nb, kb = -(-n // self.c), -(-k // self.r)
        sq = torch.zeros(nb * self.c, kb * self.r, dtype=torch.float64)
        sq[:n, :k] = w.detach().double() ** 2
        cnt = torch.zeros_like(sq)
        cnt[:n, :k] = 1.0
        sums = sq.reshape(nb, self.c, kb, self.r).sum(dim=(1, 3))
        counts = cnt.reshape(nb, self.c, kb, self.r).sum(dim=(1, 3))
        return sums / counts

    def _expand(self, blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        full = blocks.repeat_interleave(self.c, dim=0).repeat_interleave(self.r, dim=1)
        return full[: shape[0], : shape[1]]

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Grow every mask to `sparsity` (per layer, or one threshold over all layers) of its blocks."""
        scores = {name: self._block_scores(layer.module.weight * layer.mask) for name, layer in self.layers.items()}
        if self.scope == "global":
            flat = torch.cat([s.reshape(-1) for s in scores.values()])
            n_prune = int(round(sparsity * flat.numel()))
            threshold = torch.kthvalue(flat, n_prune).values if n_prune > 0 else None
        for name, layer in self.layers.items():
            s = scores[name]
            if self.scope == "global":
                keep = s > threshold if threshold is not None else torch.ones_like(s, dtype=torch.bool)
            else:
                n_prune = int(round(sparsity * s.numel()))
                keep = torch.ones(s.numel(), dtype=torch.bool)
                if n_prune > 0:
                    keep[torch.argsort(s.reshape(-1), stable=True)[:n_prune]] = False
                keep = keep.reshape(s.shape)
            layer.mask &= self._expand(keep, layer.module.weight.shape)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for layer in self.layers.values():
            layer.module.weight.mul_(layer.mask)

    def sparsity(self) -> float:
        """Fraction of pruned weights over all prunable layers."""
        kept = sum(int(layer.mask.sum()) for layer in self.layers.values())
        total = sum(layer.mask.numel() for layer in self.layers.values())
        return 1.0 - kept / total

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - float(layer.mask.float().mean()) for name, layer in self.layers.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: layer.mask.clone() for name, layer in self.layers.items()}

    def load_state_dict(self, masks: dict[str, torch.Tensor]) -> None:
        if set(masks) != set(self.layers):
            raise ValueError("checkpoint masks name other layers than this model's")
        for name, mask in masks.items():
            self.layers[name].mask = mask.clone().bool()
        self.apply()
