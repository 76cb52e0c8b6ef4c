"""Task metrics over model logits (any engine): accuracy, entity F1 (strict BIO spans), and the batched
logits of a feature list. numpy only, so the same code scores torch during training and sparsejit after."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sparsejit.training.data import IGNORE, Example, Feature

__all__ = ["accuracy", "bio_spans", "entity_f1", "feature_logits", "padded_batch", "task_score"]


def padded_batch(features: Sequence[Feature], pad_id: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids padded to the longest feature."""
    n, length = len(features), max(len(f.input_ids) for f in features)
    ids = np.full((n, length), pad_id, np.int64)
    types = np.zeros((n, length), np.int64)
    mask = np.zeros((n, length), np.int64)
    for b, f in enumerate(features):
        k = len(f.input_ids)
        ids[b, :k], types[b, :k], mask[b, :k] = f.input_ids, f.token_type_ids, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def feature_logits(run: Callable[[dict[str, np.ndarray]], np.ndarray], features: Sequence[Feature], pad_id: int,
                   batch_size: int = 32) -> list[np.ndarray]:
    """`run(feed) -> logits` over `features` in length-sorted batches; one (unpadded) array per feature."""
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    out: list[np.ndarray] = [np.empty(0)] * len(features)
    for b0 in range(0, len(order), batch_size):
        chunk = order[b0:b0 + batch_size]
        logits = np.asarray(run(padded_batch([features[i] for i in chunk], pad_id)))
        for b, i in enumerate(chunk):
            out[i] = logits[b] if logits.ndim == 2 else logits[b, :len(features[i].input_ids)]
    return out


def accuracy(logits: Sequence[np.ndarray], features: Sequence[Feature]) -> float:
    """Fraction of features whose argmax is their label."""
    hits = sum(int(np.argmax(lg) == f.label) for lg, f in zip(logits, features, strict=True))
    return hits / max(1, len(features))


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of each entity in a BIO / IOB2 tag sequence (an I- after O or after another
    type starts an entity, as seqeval's default mode does)."""
    spans: set[tuple[str, int, int]] = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-")
        begins = prefix == "B" or (prefix == "I" and typ != kind)
        if kind is not None and (tag == "O" or begins or prefix not in ("B", "I")):
            spans.add((kind, start, i - 1))
            kind = None
        if begins:
            kind, start = typ, i
    return spans


def entity_f1(logits: Sequence[np.ndarray], features: Sequence[Feature], examples: Sequence[Example],
              id2label: Mapping[int, str]) -> float:
    """Micro F1 of exact entity spans, each word tagged by its first piece (words cut by truncation: O)."""
    tp = n_pred = n_gold = 0
    for lg, f in zip(logits, features, strict=True):
        ex = examples[f.example]
        first = np.nonzero(f.labels != IGNORE)[0]
        pred = [id2label[int(np.argmax(lg[t]))] for t in first] + ["O"] * (len(ex.label) - len(first))
        p, g = bio_spans(pred), bio_spans(ex.label)
        tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
    if tp == 0:
        return 0.0
    precision, recall = tp / n_pred, tp / n_gold
    return 2 * precision * recall / (precision + recall)


def task_score(task: str, logits: Sequence[np.ndarray], features: Sequence[Feature], examples: Sequence[Example],
               id2label: Mapping[int, str]) -> float:
    """Accuracy (text classification) or entity F1 (token classification) of per-feature logits."""
    if task == "text_classification":
        return accuracy(logits, features)
    return entity_f1(logits, features, examples, id2label)
