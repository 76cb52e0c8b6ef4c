"""Task pipelines: text in, answers out (question answering, token / text classification, embeddings).

``Pipeline.create(task, model_path, ...)`` picks the class from the task registry; task modules are
imported on first use.
"""

from __future__ import annotations

from sparsejit.tasks.base import Encoded, ModelFiles, Pipeline, load_tokenizer, suggest_buckets
from sparsejit.tasks.registry import available_tasks, canonical_task, get_pipeline_class, register_task

__all__ = [
    "Encoded",
    "ModelFiles",
    "Pipeline",
    "available_tasks",
    "canonical_task",
    "get_pipeline_class",
    "load_tokenizer",
    "register_task",
    "suggest_buckets",
]
