"""Dask: the same task pipelines as `sparsejit run`, over the partitions of a Dask DataFrame.

    predictor = SparsejitPartitions("embeddings")
    ddf.map_partitions(predictor, meta=predictor.meta(ddf._meta))

A partition (a pandas DataFrame) comes back with every column it had plus the task's result columns, typed
as `sparsejit run` writes them (null for a bad row), and `error` (null, or why the row could not be run).
The predictor itself is light (its options only) and is pickled to the workers; each worker process
compiles the pipeline once, on its first partition, and reuses it for every later one (kernels come from
the on-disk cache after the first build). `meta` needs no compile. Dask is an optional extra
(`pip install 'sparsejit[dask]'`); nothing else in sparsejit imports it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from sparsejit.batch import columns as C
from sparsejit.errors import InvalidInputError

__all__ = ["SparsejitPartitions", "run_on_dask"]

_pipelines: dict[str, tuple[Any, Any]] = {}  # this process's (pipeline, result schema) per predictor options
_lock = threading.Lock()  # the threaded scheduler may run several partitions at once


class SparsejitPartitions:
    """A partition function for `DataFrame.map_partitions` (one pipeline per worker process)."""

    def __init__(self, task: str, model_path: str | None = None, *, text_column: str = "text",
                 text_pair_column: str | None = None, question_column: str = "question",
                 context_column: str = "context", batch_size: int = 16,
                 sequence_length: int | Sequence[int] = (64, 128, 256), num_threads: int | None = None,
                 precision: str = "fp32", **task_options: Any) -> None:
        from sparsejit.tasks.registry import get_pipeline_class

        self.task = get_pipeline_class(task).task  # an unknown task fails here, before any worker starts
        self.columns = C.Columns(text=text_column, text_pair=text_pair_column, question=question_column,
                                 context=context_column)
        lengths = [sequence_length] if isinstance(sequence_length, int) else list(sequence_length)
        self.pipeline_kwargs = {"task": task, "model_path": None if model_path is None else str(model_path),
                                "batch_size": batch_size, "sequence_length": lengths, "num_threads": num_threads,
                                "precision": precision, **task_options}

    def _pipeline(self) -> tuple[Any, Any]:
        key = json.dumps(self.pipeline_kwargs, sort_keys=True, default=str)
        with _lock:
            if key not in _pipelines:
                from sparsejit.tasks.base import Pipeline

                pipe = Pipeline.create(**self.pipeline_kwargs)
                _pipelines[key] = (pipe, C.arrow_schema(self.task, None, False, C.embedding_size(pipe)))
            return _pipelines[key]

    def __call__(self, partition: Any) -> Any:
        pipe, schema = self._pipeline()
        arrays = C.result_arrays(pipe, self.task, self.columns, partition.to_dict("records"), schema)
        return _with_columns(partition, arrays)

    def result_types(self) -> dict[str, Any]:
        """The pyarrow types of the added columns (for `to_parquet(schema=...)`); embeddings as float32
        lists (their length is only known once a pipeline is compiled)."""
        import pyarrow as pa

        types = {f.name: f.type for f in C.arrow_schema(self.task, None, False, None) if f.name != "row"}
        return {**types, "error": pa.string()}

    def meta(self, frame: Any) -> Any:
        """The empty DataFrame `map_partitions` returns for input columns `frame` (e.g. ``ddf._meta``)."""
        import pyarrow as pa

        arrays = {name: pa.array([], type=kind) for name, kind in self.result_types().items()}
        return _with_columns(frame.iloc[:0], arrays)


def _with_columns(partition: Any, arrays: dict[str, Any]) -> Any:
    import pyarrow as pa

    added = pa.table(arrays).to_pandas()
    added.index = partition.index
    overlap = sorted(set(added.columns) & set(partition.columns))
    if overlap:
        raise InvalidInputError(f"the input already has the result column(s) {overlap}: rename them first")
    return partition.join(added) if len(partition.columns) else added


def run_on_dask(task: str, input_path: str | os.PathLike, output_dir: str | os.PathLike, *,
                scheduler: str = "processes", num_workers: int = 2, partitions: int | None = None,
                predictor_kwargs: dict[str, Any] | None = None) -> int:
    """Read `input_path` (Parquet, JSONL or CSV) with Dask, run `task` over its partitions, write Parquet
    files into `output_dir`; returns the number of rows written. `scheduler`: "processes" or "threads"
    (local, `num_workers` of them) or a `dask.distributed` scheduler address ("tcp://host:8786", needs
    the `distributed` package)."""
    try:
        import dask
        import dask.dataframe as dd
    except ImportError:
        raise InvalidInputError("the Dask path needs dask: pip install 'sparsejit[dask]'") from None
    from pathlib import Path

    from sparsejit.batch.io import file_format

    fmt = file_format(Path(input_path))
    read = {"parquet": dd.read_parquet, "jsonl": lambda p: dd.read_json(p, lines=True), "csv": dd.read_csv}[fmt]
    frame = read(str(input_path))
    # a small file reads as one partition: split it, or a single worker gets all the work
    frame = frame.repartition(npartitions=partitions or max(4, 4 * num_workers))
    predictor = SparsejitPartitions(task, **(predictor_kwargs or {}))
    result = frame.map_partitions(predictor, meta=predictor.meta(frame._meta))
    import pyarrow as pa

    # the whole output schema: Dask would infer the object columns' types from placeholder values
    schema = pa.schema(list(pa.Schema.from_pandas(frame._meta, preserve_index=False))
                       + [pa.field(name, kind) for name, kind in predictor.result_types().items()])
    if scheduler in ("processes", "threads"):
        with dask.config.set(scheduler=scheduler, num_workers=num_workers):
            result.to_parquet(str(output_dir), write_index=False, schema=schema)
    else:
        try:
            from dask.distributed import Client
        except ImportError:
            raise InvalidInputError("a scheduler address needs dask.distributed: pip install distributed") from None
        with Client(scheduler):
            result.to_parquet(str(output_dir), write_index=False, schema=schema)
    return int(dd.read_parquet(str(output_dir)).shape[0].compute())
