"""`run`: a task pipeline over every row of a file, with resume, an errors file and a progress bar.

The input is cut into chunks of `chunk_rows` rows (the same chunks on every run). Each chunk's good rows
go through the pipeline in one call (`Pipeline.parse` -> `run_items`: rows sorted by length inside the
chunk, engine batches of similar length, results back in input order) and the chunk's results are
written to a part file under `<output>.parts/` by rename, so an interrupted run leaves only whole
parts: run again and the finished chunks are skipped, never computed twice. When every chunk is done
the parts are joined into `<output>` (again under a temporary name, then renamed) and removed. Rows
that cannot be run (missing / empty / non-text column, a line that is not JSON, bytes that are not
UTF-8) go to `<output>.errors.jsonl` with their row number, id and reason; the run goes on.

The input is parsed once (the progress bar's total comes from a byte scan, or Parquet's footer). With
`workers` > 1, chunks are run by that many worker processes, each with its own compiled pipeline (the
kernel cache on disk is shared) and ``cores // workers`` kernel threads; they write the part files
themselves, so resuming works the same way.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsejit.batch import columns as C
from sparsejit.batch.io import (
    BadRecord,
    estimate_records,
    file_format,
    join_parts,
    read_records,
    require_pyarrow,
    write_part,
)
from sparsejit.errors import InvalidInputError

_PART = "part-{:06d}"


@dataclass(frozen=True)
class RunSummary:
    rows: int
    written: int
    errors: int
    resumed_chunks: int
    seconds: float
    output: str
    errors_file: str | None
    sequence_lengths: list[int]

    @property
    def items_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0


def _chunks(numbered: Iterator[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    while chunk := list(itertools.islice(numbered, size)):
        yield chunk


@dataclass(frozen=True)
class ChunkJob:
    """What a process needs to run chunks and write their parts (picklable, sent to worker processes)."""

    task: str
    files: Any  # tasks.base.ModelFiles
    lengths: list[int]
    batch_size: int
    num_threads: int | None
    precision: str
    options: dict[str, Any]
    cols: C.Columns
    id_column: str | None
    id_is_int: bool
    out_fmt: str
    parts_dir: Path

    @property
    def ext(self) -> str:
        """The suffix of the result parts."""
        return "parquet" if self.out_fmt == "parquet" else "jsonl"


_loaded: tuple[ChunkJob, Any, Any] | None = None  # this process's (job, pipeline, output schema)


def _pipeline(job: ChunkJob) -> tuple[Any, Any]:
    """The job's pipeline and Parquet schema, compiled once per process."""
    global _loaded
    if _loaded is None or _loaded[0] != job:
        from sparsejit.tasks.registry import get_pipeline_class

        pipe = get_pipeline_class(job.task)(job.files, batch_size=job.batch_size, sequence_length=job.lengths,
                                            num_threads=job.num_threads, precision=job.precision, **job.options)
        schema = (C.arrow_schema(job.task, job.id_column, job.id_is_int, C.embedding_size(pipe))
                  if job.out_fmt == "parquet" else None)
        _loaded = (job, pipe, schema)
    return _loaded[1], _loaded[2]


def _release() -> None:
    """Drop this process's pipeline (run() returns with nothing compiled held)."""
    global _loaded
    _loaded = None


def run_chunk_to_parts(job: ChunkJob, index: int, chunk: list[tuple[int, Any]]) -> tuple[int, int]:
    """Run one chunk and write its result part, its errors part and its done marker (each by rename);
    returns (rows written, bad rows)."""
    pipe, schema = _pipeline(job)
    rows, bad = _run_chunk(pipe, job.task, chunk, job.cols, job.id_column)
    name = _PART.format(index)
    write_part(rows, schema, job.parts_dir / f"{name}.{job.ext}", job.out_fmt)
    write_part(bad, None, job.parts_dir / f"{name}.errors.jsonl", "jsonl")
    (job.parts_dir / f"{name}.done.tmp").write_text(json.dumps({"written": len(rows), "errors": len(bad)}))
    (job.parts_dir / f"{name}.done.tmp").replace(job.parts_dir / f"{name}.done")
    return len(rows), len(bad)


def _manifest(input_path: Path, task: str, model: str | None, cols: C.Columns, chunk_rows: int,
              options: dict[str, Any], out_fmt: str) -> dict[str, Any]:
    stat = input_path.stat()
    return {"input": str(input_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "task": task,
            "model": model, "columns": asdict(cols), "chunk_rows": chunk_rows, "options": options,
            "format": out_fmt}


def _prepare_parts(parts_dir: Path, manifest: dict[str, Any], restart: bool) -> int:
    """Create (or check, on resume) the parts directory; returns how many chunks are already done."""
    path = parts_dir / "manifest.json"
    if parts_dir.is_dir() and (restart or not path.is_file()):
        shutil.rmtree(parts_dir)
    if parts_dir.is_dir():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(manifest)):
            changed = sorted(k for k in manifest if previous.get(k) != json.loads(json.dumps(manifest))[k])
            raise InvalidInputError(f"{parts_dir} holds an unfinished run with other settings ({changed} differ): "
                                    "run with the same settings to resume it, or pass restart=True (--restart)")
        return len(list(parts_dir.glob("part-*.done")))
    parts_dir.mkdir(parents=True)
    tmp = path.with_name("manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)
    return 0


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    # disable=None: quiet when stderr is not a terminal (logs, CI), as users' other tools are
    return tqdm(total=total, unit="row", desc="sparsejit run", disable=None if enabled else True, dynamic_ncols=True)


def run(task: str, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
        model_path: str | os.PathLike | None = None, columns: C.Columns | None = None,
        sequence_length: int | Sequence[int] | None = None, batch_size: int = 16, chunk_rows: int = 1024,
        num_threads: int | None = None, precision: str = "fp32", input_format: str | None = None,
        output_format: str | None = None, restart: bool = False, progress: bool = True,
        task_options: dict[str, Any] | None = None, workers: int = 1) -> RunSummary:
    """Run `task` over every row of `input_path` into `output_path` (see the module docstring).

    Without `model_path` the task's default model is used, as `sparsejit serve` does. Without
    `sequence_length` the buckets are suggested from the token counts of the first chunk. `workers`
    processes run the chunks (default 1: this process); `num_threads` is then per worker.
    """
    from sparsejit.tasks.base import resolve_model_files, suggest_buckets
    from sparsejit.tasks.registry import get_pipeline_class

    cols = columns or C.Columns()
    options = dict(task_options or {})
    source, out = Path(input_path), Path(output_path)
    in_fmt, out_fmt = file_format(source, input_format), file_format(out, output_format)
    if out_fmt == "csv":
        raise InvalidInputError("results are written as Parquet or JSONL (nested columns do not fit CSV)")
    if not source.is_file():
        raise InvalidInputError(f"no input file {source}")
    if out_fmt == "parquet" or in_fmt == "parquet":
        require_pyarrow()
    if chunk_rows < 1 or batch_size < 1 or workers < 1:
        raise InvalidInputError("chunk_rows, batch_size and workers must be >= 1")
    klass = get_pipeline_class(task)
    name = klass.task
    if name not in (C.EMBEDDINGS, C.CLASSIFICATION, C.NER, C.QA):
        raise InvalidInputError(f"task {task!r} has no batch columns")
    start = time.perf_counter()
    numbered = enumerate(read_records(source, in_fmt))
    first_chunk = list(itertools.islice(numbered, chunk_rows))  # parsed once: also the main pass's first chunk
    head = [r for _, r in first_chunk if isinstance(r, dict)]
    first = head[0] if head else {}
    id_column = cols.id if cols.id in first else None
    id_is_int = id_column is not None and isinstance(first.get(id_column), int)

    files = resolve_model_files(model_path if model_path is not None else klass.default_model(),
                                klass.checkpoint_head)
    if sequence_length is None:
        sample = [r for r in head if C.check(name, r, cols) is None]
        texts = [(r[cols.question], r[cols.context]) if name == C.QA else r[cols.text] for r in sample]
        sequence_length = suggest_buckets(texts, files.directory) if texts else 128
    lengths = [sequence_length] if isinstance(sequence_length, int) else sorted(set(sequence_length))
    if workers > 1 and num_threads is None:
        num_threads = max(1, (os.cpu_count() or 1) // workers)
    parts_dir = out.with_name(out.name + ".parts")
    job = ChunkJob(name, files, lengths, batch_size, num_threads, precision, options, cols, id_column, id_is_int,
                   out_fmt, parts_dir)
    if workers == 1:
        _pipeline(job)  # compile before the parts directory exists: a bad option leaves nothing behind
    manifest = _manifest(source, name, str(model_path) if model_path is not None else None, cols, chunk_rows,
                         options, out_fmt)
    resumed = _prepare_parts(parts_dir, manifest, restart)
    chunks = itertools.chain([first_chunk] if first_chunk else [], _chunks(numbered, chunk_rows))
    try:
        total, written, errors = _run_chunks(job, chunks, workers, estimate_records(source, in_fmt), progress)
        parts = sorted(parts_dir.glob(f"part-*.{job.ext}"))
        schema = None
        if out_fmt == "parquet":
            schema = _pq_schema(parts[0]) if parts and workers > 1 else _pipeline(job)[1]
    finally:
        _release()
    join_parts(parts, schema, out, out_fmt)
    errors_file = out.with_name(out.name + ".errors.jsonl")
    join_parts(sorted(parts_dir.glob("part-*.errors.jsonl")), None, errors_file, "jsonl")
    if errors == 0:
        errors_file.unlink()
    shutil.rmtree(parts_dir)
    return RunSummary(rows=total, written=written, errors=errors, resumed_chunks=resumed,
                      seconds=time.perf_counter() - start, output=str(out),
                      errors_file=str(errors_file) if errors else None, sequence_lengths=lengths)


def _pq_schema(path: Path) -> Any:
    import pyarrow.parquet as pq

    return pq.read_schema(path)


def _run_chunks(job: ChunkJob, chunks: Iterator[list[tuple[int, Any]]], workers: int, estimate: int,
                progress: bool) -> tuple[int, int, int]:
    """Run every chunk not already done, here or in `workers` processes; returns (rows, written, errors)."""
    total = written = errors = 0
    bar = _progress(estimate, progress)
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 1 else None)
    pending: deque[tuple[Future, int]] = deque()

    def account(counts: tuple[int, int], rows: int) -> None:
        nonlocal written, errors
        written, errors = written + counts[0], errors + counts[1]
        bar.update(rows)
        if errors:
            bar.set_postfix(errors=errors)

    try:
        for index, chunk in enumerate(chunks):
            total += len(chunk)
            done = job.parts_dir / (_PART.format(index) + ".done")
            if done.is_file():
                counts = json.loads(done.read_text())
                account((counts["written"], counts["errors"]), len(chunk))
            elif pool is None:
                account(run_chunk_to_parts(job, index, chunk), len(chunk))
            else:
                pending.append((pool.submit(run_chunk_to_parts, job, index, chunk), len(chunk)))
                while len(pending) > 2 * workers:  # bounded: the input is never all in memory
                    future, rows = pending.popleft()
                    account(future.result(), rows)
        while pending:
            future, rows = pending.popleft()
            account(future.result(), rows)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return total, written, errors


def _run_chunk(pipe: Any, task: str, chunk: list[tuple[int, Any]], cols: C.Columns,
               id_column: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(result rows, error rows) of one chunk; a row the pipeline refuses is isolated, not fatal."""
    good: list[tuple[int, dict[str, Any]]] = []
    bad: list[dict[str, Any]] = []
    for row, record in chunk:
        reason = record.reason if isinstance(record, BadRecord) else C.check(task, record, cols)
        if reason is None:
            good.append((row, record))
        else:
            ident = record.get(id_column) if isinstance(record, dict) and id_column else None
            bad.append({"row": row, "id": ident, "reason": reason})
    outcomes = C.run_isolating(pipe, task, [C.item(task, r, cols) for _, r in good])
    rows = []
    for (row, record), (result, reason) in zip(good, outcomes, strict=True):
        if reason is not None:
            bad.append({"row": row, "id": record.get(id_column) if id_column else None, "reason": reason})
            continue
        out = {"row": row}
        if id_column is not None:
            out[id_column] = record.get(id_column)
        out.update(C.result_columns(task, result))
        rows.append(out)
    bad.sort(key=lambda b: b["row"])
    return rows, bad
