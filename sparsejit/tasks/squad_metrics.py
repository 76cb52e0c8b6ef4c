"""Official SQuAD exact-match / F1 scoring (the normalisation of the SQuAD v1.1 / v2.0 evaluation scripts).

Normalisation: lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace. A
prediction scores the maximum over the gold answers; an unanswerable question's only gold answer is "".
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and articles, and collapse whitespace (official SQuAD rules)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 between normalised prediction and gold (both empty → 1.0, one empty → 0.0)."""
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(qa: Mapping[str, Any]) -> list[str]:
    """The gold answer texts of one SQuAD question dict (``[""]`` for an unanswerable one)."""
    texts = [a["text"] for a in qa.get("answers", []) if normalize_answer(a["text"])]
    return texts or [""]


def iter_questions(dataset: Mapping[str, Any]) -> Iterable[tuple[str, str, str, list[str]]]:
    """Yield ``(id, question, context, gold answers)`` for every question of a SQuAD-format dataset."""
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield qa["id"], qa["question"], paragraph["context"], gold_answers(qa)


def evaluate(dataset: Mapping[str, Any], predictions: Mapping[str, str]) -> dict[str, float]:
    """EM and F1 in percent (plus the question count) of ``predictions`` {id: text} on ``dataset``.

    Questions without a prediction count as wrong, as in the official script.
    """
    em = f1 = 0.0
    total = 0
    for qid, _question, _context, golds in iter_questions(dataset):
        total += 1
        if qid not in predictions:
            continue
        pred = predictions[qid]
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    if total == 0:
        return {"exact_match": 0.0, "f1": 0.0, "total": 0}
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total, "total": total}
