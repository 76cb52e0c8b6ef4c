"""Task registry: maps task names and aliases to pipeline classes (imported lazily).

Names are normalised before lookup: case does not matter and ``-`` / ``_`` / spaces are interchangeable,
so ``"Token-Classification"``, ``"token_classification"`` and ``"ner"`` all name the same task.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from sparsejit.errors import InvalidInputError

if TYPE_CHECKING:
    from sparsejit.tasks.base import Pipeline

#: canonical task name -> "module:ClassName" (imported on first use, so importing sparsejit stays cheap).
_TASKS: dict[str, str] = {
    "question_answering": "sparsejit.tasks.question_answering:QuestionAnsweringPipeline",
    "token_classification": "sparsejit.tasks.token_classification:TokenClassificationPipeline",
    "text_classification": "sparsejit.tasks.text_classification:TextClassificationPipeline",
    "transformers_embedding_extraction": "sparsejit.tasks.embedding_extraction:EmbeddingExtractionPipeline",
}

#: alias -> canonical task name (every canonical name is also its own alias).
_ALIASES: dict[str, str] = {
    "qa": "question_answering",
    "ner": "token_classification",
    "sentiment_analysis": "text_classification",
    "sentiment": "text_classification",
    "embedding_extraction": "transformers_embedding_extraction",
    "embeddings": "transformers_embedding_extraction",
}


def normalize_task(task: str) -> str:
    """Lower-case ``task`` and turn runs of ``-``, ``_``, spaces into one ``_``."""
    if not isinstance(task, str):
        raise InvalidInputError(f"task must be a string, got {type(task).__name__}")
    return re.sub(r"[-_\s]+", "_", task.strip().lower())


def canonical_task(task: str) -> str:
    """The canonical name of ``task`` (an alias or canonical name); raises for unknown tasks."""
    name = normalize_task(task)
    name = _ALIASES.get(name, name)
    if name not in _TASKS:
        known = ", ".join(available_tasks())
        raise InvalidInputError(f"unknown task {task!r}; known tasks and aliases: {known}")
    return name


def available_tasks() -> list[str]:
    """Every accepted task name: canonical names and aliases, sorted."""
    return sorted(set(_TASKS) | set(_ALIASES))


def register_task(name: str, target: str | type[Pipeline], aliases: tuple[str, ...] = ()) -> None:
    """Register a pipeline class (or a lazy ``"module:Class"`` string) under ``name`` and ``aliases``."""
    if not isinstance(target, str):
        target = f"{target.__module__}:{target.__qualname__}"
    canonical = normalize_task(name)
    _TASKS[canonical] = target
    for alias in aliases:
        _ALIASES[normalize_task(alias)] = canonical


def get_pipeline_class(task: str) -> type[Pipeline]:
    """The pipeline class for ``task`` (any alias), importing its module on first use."""
    name = canonical_task(task)
    module_name, _, class_name = _TASKS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise InvalidInputError(f"task {name!r} is registered but its module {module_name} is not "
                                    "available in this version of sparsejit") from exc
        raise
    return getattr(module, class_name)
