"""`run`: a task pipeline over every row of a file, with resume, an errors file and a progress bar.

The input is cut into chunks of `chunk_rows` rows (the same chunks on every run). Each chunk's good rows
go through the pipeline in one call (`Pipeline.parse` -> `run_items`: rows sorted by length inside the
chunk, engine batches of similar length, results back in input order) and the chunk's results are
written to a part file under `<output>.parts/` by rename, so an interrupted run leaves only whole
parts: run again and the finished chunks are skipped, never computed twice. When every chunk is done
the parts are joined into `<output>` (again under a temporary name, then renamed) and removed. Rows
that cannot be run (missing / empty / non-text column, a line that is not JSON, bytes that are not
UTF-8) go to `<output>.errors.jsonl` with their row number, id and reason; the run goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsejit.batch import columns as C
from sparsejit.batch.io import (
    BadRecord,
    count_records,
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


def _chunks(records: Iterator[dict[str, Any] | BadRecord], size: int) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    for row, record in enumerate(records):
        chunk.append((row, record))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
        task_options: dict[str, Any] | None = None) -> RunSummary:
    """Run `task` over every row of `input_path` into `output_path` (see the module docstring).

    Without `model_path` the task's default model is used, as `sparsejit serve` does. Without
    `sequence_length` the buckets are suggested from the token counts of the first chunk.
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
    if chunk_rows < 1 or batch_size < 1:
        raise InvalidInputError("chunk_rows and batch_size must be >= 1")
    klass = get_pipeline_class(task)
    name = klass.task
    if name not in (C.EMBEDDINGS, C.CLASSIFICATION, C.NER, C.QA):
        raise InvalidInputError(f"task {task!r} has no batch columns")
    start = time.perf_counter()
    total = count_records(source, in_fmt)
    head = [r for _, r in zip(range(chunk_rows), read_records(source, in_fmt), strict=False) if isinstance(r, dict)]
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
    pipe = klass(files, batch_size=batch_size, sequence_length=lengths, num_threads=num_threads,
                 precision=precision, **options)
    schema = C.arrow_schema(name, id_column, id_is_int, C.embedding_size(pipe)) if out_fmt == "parquet" else None

    parts_dir = out.with_name(out.name + ".parts")
    manifest = _manifest(source, name, str(model_path) if model_path is not None else None, cols, chunk_rows,
                         options, out_fmt)
    resumed = _prepare_parts(parts_dir, manifest, restart)
    ext = "parquet" if out_fmt == "parquet" else "jsonl"
    written = errors = 0
    bar = _progress(total, progress)
    try:
        for index, chunk in enumerate(_chunks(read_records(source, in_fmt), chunk_rows)):
            done = parts_dir / (_PART.format(index) + ".done")
            if done.is_file():
                counts = json.loads(done.read_text())
                written, errors = written + counts["written"], errors + counts["errors"]
                bar.update(len(chunk))
                continue
            rows, bad = _run_chunk(pipe, name, chunk, cols, id_column)
            write_part(rows, schema, parts_dir / f"{_PART.format(index)}.{ext}", out_fmt)
            write_part(bad, None, parts_dir / f"{_PART.format(index)}.errors.jsonl", "jsonl")
            (parts_dir / f"{_PART.format(index)}.done.tmp").write_text(json.dumps(
                {"written": len(rows), "errors": len(bad)}))
            (parts_dir / f"{_PART.format(index)}.done.tmp").replace(done)
            written, errors = written + len(rows), errors + len(bad)
            bar.update(len(chunk))
            bar.set_postfix(errors=errors)
    finally:
        bar.close()
    parts = sorted(parts_dir.glob(f"part-*.{ext}"))
    join_parts(parts, schema, out, out_fmt)
    errors_file = out.with_name(out.name + ".errors.jsonl")
    join_parts(sorted(parts_dir.glob("part-*.errors.jsonl")), None, errors_file, "jsonl")
    if errors == 0:
        errors_file.unlink()
    shutil.rmtree(parts_dir)
    return RunSummary(rows=total, written=written, errors=errors, resumed_chunks=resumed,
                      seconds=time.perf_counter() - start, output=str(out),
                      errors_file=str(errors_file) if errors else None, sequence_lengths=lengths)


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
