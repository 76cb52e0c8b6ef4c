"""Text classification (sentiment analysis): texts or text pairs in, labels and scores out.

Same results as `transformers`' ``pipeline("text-classification")``: labels from config.json
``id2label``; softmax / sigmoid / none chosen from ``problem_type`` and the number of labels unless
``function_to_apply`` says otherwise; without ``top_k`` each input gives its best ``{label, score}``, with
``top_k=k`` (or ``None`` for all labels) each input gives a list sorted by score.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, RootModel

from sparsejit.errors import InvalidInputError
from sparsejit.tasks.base import Encoded, Pipeline

__all__ = ["TextClassificationPipeline", "TextClassificationInput", "TextClassificationOutput", "LabelScore"]

FUNCTIONS = ("softmax", "sigmoid", "none")
_UNSET: Any = object()


class TextPair(BaseModel):
    """A pair of texts classified together (e.g. premise / hypothesis)."""

    text: str
    text_pair: str


class TextClassificationInput(BaseModel):
    """Request: one text / pair or a list of them, plus per-call options."""

    inputs: str | TextPair | list[str | TextPair] = Field(description="text(s) or {text, text_pair} pair(s)")
    top_k: int | None = Field(1, description="labels per input, sorted by score; null returns all labels")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="score function; default from config.json problem_type / number of labels")
    truncate: bool | None = Field(None, description="cut inputs longer than the largest sequence length "
                                                    "(default); false: such an input is an error")
    truncation_direction: Literal["left", "right"] | None = Field(None, description="which end is cut")


class LabelScore(BaseModel):
    """One label with its score."""

    label: str
    score: float


class TextClassificationOutput(RootModel[list[LabelScore] | list[list[LabelScore]] | LabelScore]):
    """Response, shaped like transformers: a list of {label, score} (one per input, or top_k for a single
    input), a list of such lists (top_k given, several inputs), or one {label, score} for a single
    text pair without top_k (as transformers returns it)."""


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis (float64 for exact ranking of close scores)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


class TextClassificationPipeline(Pipeline):
    """Classify texts or text pairs: ``pipe("I love it")`` -> ``[{"label": "POSITIVE", "score": 0.98}]``.

    Options: ``top_k`` (int, or None for every label), ``function_to_apply`` (softmax / sigmoid / none).
    """

    task = "text_classification"
    checkpoint_head = "sequence_classification"
    input_schema = TextClassificationInput
    output_schema = TextClassificationOutput

    def _sanitize_parameters(self, top_k: int | None = _UNSET, function_to_apply: str | None = None,
                             truncate: bool | None = None,
                             truncation_direction: str | None = None) -> tuple[dict, dict, dict]:
        pre = self.truncation_options(truncate, truncation_direction)
        post: dict[str, Any] = {}
        if top_k is not _UNSET:
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise InvalidInputError(f"top_k must be a positive int or None, got {top_k!r}")
            post["top_k"] = top_k
            post["legacy"] = False
        if function_to_apply is not None:
            name = str(function_to_apply).lower()
            if name == "default":
                name = None
            elif name not in FUNCTIONS:
                raise InvalidInputError(f"function_to_apply must be one of {FUNCTIONS}, "
                                        f"got {function_to_apply!r}")
            post["function_to_apply"] = name
        return pre, {}, post

    def _parse_inputs(self, inputs: Any, kwargs: dict[str, Any]) -> tuple[list[Any], bool, dict[str, Any]]:
        if "inputs" in kwargs:
            if inputs is not None:
                raise InvalidInputError("give the inputs positionally or as inputs=, not both")
            inputs = kwargs.pop("inputs")
        if inputs is None:
            raise InvalidInputError("no inputs: call pipeline(text), pipeline([texts]) or "
                                    "pipeline({'text': ..., 'text_pair': ...})")
        single: bool | str = "text" if isinstance(inputs, str) else isinstance(inputs, dict)
        items = [inputs] if single else list(inputs)
        parsed: list[str | tuple[str, str]] = []
        for item in items:
            if isinstance(item, str):
                parsed.append(item)
            elif isinstance(item, dict) and set(item) <= {"text", "text_pair"} and "text" in item:
                parsed.append((item["text"], item["text_pair"]) if item.get("text_pair") is not None
                              else item["text"])
            elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(t, str) for t in item):
                parsed.append((item[0], item[1]))  # [[text, pair]] as transformers still accepts
            else:
                raise InvalidInputError(f"cannot classify {item!r}: give a string or a dict "
                                        "{'text': ..., 'text_pair': ...}")
        return parsed, single, kwargs

    def _format_results(self, results: list[Any], single: bool) -> Any:
        if single == "text" and not isinstance(results[0], list):
            return results  # transformers returns [ {label, score} ] for a single text without top_k
        return results[0] if single else results

    def preprocess(self, items: list[str | tuple[str, str]], truncate: bool = True,
                   truncation_direction: str = "right", **kwargs: Any) -> list[Encoded]:
        encodings = self.encode_texts(items, truncate, truncation_direction)
        return [Encoded([self.rows_from_encoding(e)]) for e in encodings]

    def _default_function(self) -> str:
        problem = self.config.get("problem_type")
        n = len(self.id2label)
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or n == 1:
            return "sigmoid"
        if problem == "single_label_classification" or n > 1:
            return "softmax"
        return str(self.config.get("function_to_apply") or "none").lower()

    def postprocess(self, encoded: Encoded, outputs: list[dict[str, np.ndarray]], top_k: int | None = 1,
                    legacy: bool = True, function_to_apply: str | None = None) -> Any:
        name = "logits" if "logits" in outputs[0] else self.engine.output_names[0]
        logits = np.asarray(outputs[0][name], dtype=np.float32).reshape(-1)
        function = function_to_apply or self._default_function()
        scores = softmax(logits) if function == "softmax" else sigmoid(logits) if function == "sigmoid" \
            else logits.astype(np.float64)
        labels = self.id2label
        if top_k == 1 and legacy:
            best = int(scores.argmax())
            return {"label": labels.get(best, f"LABEL_{best}"), "score": float(scores[best])}
        ranked = [{"label": labels.get(i, f"LABEL_{i}"), "score": float(s)} for i, s in enumerate(scores)]
        if not legacy:
            ranked.sort(key=lambda d: d["score"], reverse=True)
            if top_k is not None:
                ranked = ranked[:top_k]
        return ranked
