"""Offline inference over files: `run` a task pipeline on every row of a JSONL / CSV / Parquet file."""

from sparsejit.batch.columns import Columns
from sparsejit.batch.runner import RunSummary, run

__all__ = ["Columns", "RunSummary", "run"]
