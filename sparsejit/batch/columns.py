"""Per task: which input columns make an item, how a row is checked, and the typed output columns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsejit.errors import InvalidInputError, SparsejitError

EMBEDDINGS, CLASSIFICATION, NER, QA = ("transformers_embedding_extraction", "text_classification",
                                       "token_classification", "question_answering")


@dataclass(frozen=True)
class Columns:
    """Input column names: text (text pair for classification; question and context for QA) and id."""

    text: str = "text"
    text_pair: str | None = None
    question: str = "question"
    context: str = "context"
    id: str = "id"


def _text(record: Mapping[str, Any], column: str) -> str | None:
    value = record.get(column)
    return value if isinstance(value, str) and value.strip() else None


def check(task: str, record: Mapping[str, Any], columns: Columns) -> str | None:
    """Why `record` cannot be run (missing / empty / non-text column), or None."""
    needed = [columns.question, columns.context] if task == QA else [columns.text]
    if task == CLASSIFICATION and columns.text_pair:
        needed.append(columns.text_pair)
    for name in needed:
        if name not in record:
            return f"no column {name!r}"
        if not isinstance(record[name], str):
            return f"column {name!r} is {type(record[name]).__name__}, not text"
        if not record[name].strip():
            return f"column {name!r} is empty"
    return None


def item(task: str, record: Mapping[str, Any], columns: Columns) -> Any:
    """What the pipeline is called with for one (checked) record."""
    if task == QA:
        return {"question": record[columns.question], "context": record[columns.context]}
    if task == CLASSIFICATION and columns.text_pair:
        return {"text": record[columns.text], "text_pair": record[columns.text_pair]}
    return record[columns.text]


def call_arguments(task: str, items: list[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """`pipeline.parse(*args, **kwargs)` arguments for a list of items."""
    if task == QA:
        return (), {"question": [i["question"] for i in items], "context": [i["context"] for i in items]}
    return (items,), {}


def run_isolating(pipe: Any, task: str, items: list[Any]) -> list[tuple[Any, str | None]]:
    """(result, None) per item, in one pipeline call; when that call refuses the items, each is run alone
    and one the pipeline refuses gets (None, why) instead of failing its neighbours."""
    if not items:
        return []
    try:
        return [(result, None) for result in _call(pipe, task, items)]
    except SparsejitError:
        pass
    outcomes: list[tuple[Any, str | None]] = []
    for one in items:
        try:
            outcomes.append((_call(pipe, task, [one])[0], None))
        except SparsejitError as exc:
            outcomes.append((None, f"{type(exc).__name__}: {exc}"))
    return outcomes


def _call(pipe: Any, task: str, items: list[Any]) -> list[Any]:
    args, kwargs = call_arguments(task, items)
    parsed, _, options = pipe.parse(*args, **kwargs)
    return pipe.run_items(parsed, options)


def result_columns(task: str, result: Any) -> dict[str, Any]:
    """The output columns of one item's pipeline result."""
    if task == EMBEDDINGS:
        return {"embedding": np.asarray(result, dtype=np.float32).tolist()}
    if task == CLASSIFICATION:
        best = result[0] if isinstance(result, list) else result
        return {"label": str(best["label"]), "score": float(best["score"])}
    if task == NER:
        return {"entities": [{"label": str(e.get("entity_group", e.get("entity"))), "score": float(e["score"]),
                              "word": str(e["word"]), "start": _int(e.get("start")), "end": _int(e.get("end"))}
                             for e in result]}
    if task == QA:
        best = result[0] if isinstance(result, list) else result
        return {"answer": str(best["answer"]), "score": float(best["score"]), "start": int(best["start"]),
                "end": int(best["end"])}
    raise InvalidInputError(f"task {task!r} has no batch output columns")


def result_arrays(pipe: Any, task: str, cols: Columns, records: list[dict[str, Any]], schema: Any) -> dict[str, Any]:
    """The task's result columns for `records` as typed pyarrow arrays (the fields of `schema` but `row`;
    null for a row that could not be run) plus `error` (null, or why): what the Ray and Dask batch
    functions add to each batch."""
    import pyarrow as pa

    reasons = [check(task, r, cols) for r in records]
    good = [i for i, why in enumerate(reasons) if why is None]
    results: dict[int, dict[str, Any]] = {}
    outcomes = run_isolating(pipe, task, [item(task, records[i], cols) for i in good])
    for i, (result, reason) in zip(good, outcomes, strict=True):
        if reason is None:
            results[i] = result_columns(task, result)
        else:
            reasons[i] = reason
    arrays = {field.name: pa.array([results[i][field.name] if i in results else None for i in range(len(records))],
                                   type=field.type) for field in schema if field.name != "row"}
    arrays["error"] = pa.array(reasons, type=pa.string())
    return arrays


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def embedding_size(pipe: Any) -> int | None:
    """The length of the vectors an embeddings pipeline returns (its options applied); None for others."""
    if pipe.task != EMBEDDINGS:
        return None
    return len(pipe.format(pipe.run_items(["size probe"], {}), True))


def arrow_schema(task: str, id_column: str | None, id_is_int: bool, embedding_size: int | None) -> Any:
    """The output table's schema: `row`, the id column when the input has one, then the task's columns."""
    import pyarrow as pa

    fields = [pa.field("row", pa.int64())]
    if id_column is not None:
        fields.append(pa.field(id_column, pa.int64() if id_is_int else pa.string()))
    if task == EMBEDDINGS:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_size or -1)))
    elif task == CLASSIFICATION:
        fields += [pa.field("label", pa.string()), pa.field("score", pa.float64())]
    elif task == NER:
        entity = pa.struct([("label", pa.string()), ("score", pa.float64()), ("word", pa.string()),
                            ("start", pa.int64()), ("end", pa.int64())])
        fields.append(pa.field("entities", pa.list_(entity)))
    else:
        fields += [pa.field("answer", pa.string()), pa.field("score", pa.float64()), pa.field("start", pa.int64()),
                   pa.field("end", pa.int64())]
    return pa.schema(fields)
