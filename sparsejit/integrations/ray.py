"""Ray Data: the same task pipelines as `sparsejit run`, spread over a pool of actors.

    ds.map_batches(SparsejitPredictor, fn_constructor_kwargs={"task": "embeddings"}, batch_size=256,
                   concurrency=2)

Each actor builds its pipeline once (kernels come from the on-disk cache after the first build) and
reuses it for every batch; a batch is a dict of column arrays (Ray's "numpy" format): the text column
is read, every column is passed through, the task's result columns are added with the types `sparsejit
run` writes (null for a bad row), plus `error` (null, or why the row could not be run); the answer is a
pyarrow Table. Ray is an optional extra
(`pip install 'sparsejit[ray]'`); nothing else in sparsejit imports it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsejit.batch import columns as C
from sparsejit.errors import InvalidInputError


class SparsejitPredictor:
    """A stateful batch function for `Dataset.map_batches` (one pipeline per actor)."""

    def __init__(self, task: str, model_path: str | None = None, *, text_column: str = "text",
                 text_pair_column: str | None = None, question_column: str = "question",
                 context_column: str = "context", batch_size: int = 16,
                 sequence_length: int | Sequence[int] = (64, 128, 256), num_threads: int | None = None,
                 precision: str = "fp32", **task_options: Any) -> None:
        from sparsejit.tasks.base import Pipeline

        self.pipe = Pipeline.create(task, model_path, batch_size=batch_size,
                                    sequence_length=list(sequence_length) if not isinstance(sequence_length, int)
                                    else sequence_length, num_threads=num_threads, precision=precision,
                                    **task_options)
        self.task = self.pipe.task
        self.columns = C.Columns(text=text_column, text_pair=text_pair_column, question=question_column,
                                 context=context_column)
        # the result columns' types, fixed for every batch (a batch with a bad row must not change them)
        self.result_schema = C.arrow_schema(self.task, None, False, C.embedding_size(self.pipe))

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        names = list(batch)
        n = len(batch[names[0]]) if names else 0
        records = [{k: _python(batch[k][i]) for k in names} for i in range(n)]
        import pyarrow as pa

        out = {name: pa.array(list(batch[name])) if batch[name].dtype == object else pa.array(batch[name])
               for name in names}
        out.update(C.result_arrays(self.pipe, self.task, self.columns, records, self.result_schema))
        return pa.table(out)


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def run_on_ray(task: str, input_path: str | os.PathLike, output_dir: str | os.PathLike, *,
               address: str | None = None, concurrency: int = 2, batch_size: int = 256, actor_cpus: float = 1.0,
               predictor_kwargs: dict[str, Any] | None = None) -> int:
    """Read `input_path` (Parquet, JSONL or CSV) with Ray Data, run `task` on `concurrency` actors, write
    Parquet files into `output_dir`; returns the number of rows written. `address`: a running cluster
    ("auto", "ray://host:10001"); None starts a local one. `actor_cpus`: the CPUs Ray reserves per actor;
    when the actors would reserve every CPU of the cluster, Ray Data cannot schedule its read and write
    tasks and the run stalls, so on a small machine give less than a whole CPU (the kernels still use
    `num_threads` threads)."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError("the Ray path needs ray: pip install 'sparsejit[ray]'") from None
    from sparsejit.batch.io import file_format

    fmt = file_format(__import__("pathlib").Path(input_path))
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    read = {"parquet": ray.data.read_parquet, "jsonl": ray.data.read_json, "csv": ray.data.read_csv}[fmt]
    # a file of one row group reads as one block: split it, or a single actor gets all the work
    dataset = read(str(input_path)).repartition(max(4, 4 * concurrency)).map_batches(
        SparsejitPredictor, fn_constructor_kwargs={"task": task, **(predictor_kwargs or {})},
        batch_size=batch_size, concurrency=concurrency, batch_format="numpy", num_cpus=actor_cpus)
    dataset.write_parquet(str(output_dir))
    return int(ray.data.read_parquet(str(output_dir)).count())
