"""Offline inference over files: `run` a task pipeline on every row of a JSONL / CSV / Parquet file."""

from sparsejit.batch.columns import Columns
from sparsejit.batch.runner import RunSummary, run, suggest_sequence_lengths

__all__ = ["Columns", "RunSummary", "run", "suggest_sequence_lengths"]
