"""Which checkpoint head each fine-tuning task trains: the one its pipeline builds from a checkpoint."""

from __future__ import annotations

__all__ = ["task_head"]


def task_head(task: str) -> str:
    """The `sparsejit.checkpoints` head of `task` (its pipeline's ``checkpoint_head``)."""
    from sparsejit.tasks.registry import get_pipeline_class

    return get_pipeline_class(task).checkpoint_head
