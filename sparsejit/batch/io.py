"""Reading records from JSONL / CSV / Parquet and writing result tables to Parquet / JSONL.

Records are read in a fixed order and numbered from 0, so a chunk of rows is the same on every run (what
resuming relies on). A line that is not a JSON object, or a value with bytes that are not UTF-8, comes
back as a `BadRecord` (its row number and the reason) instead of stopping the run. Parquet needs
`pyarrow` (the `sparsejit[parquet]` extra); JSONL and CSV need nothing beyond the standard library.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsejit.errors import InvalidInputError

FORMATS = ("jsonl", "csv", "parquet")


@dataclass(frozen=True)
class BadRecord:
    """A row that could not be read: its number and why."""

    row: int
    reason: str


def file_format(path: Path, given: str | None = None) -> str:
    """The format named by `given` or by the file's suffix (.jsonl/.ndjson/.json, .csv, .parquet/.pq)."""
    if given:
        if given not in FORMATS:
            raise InvalidInputError(f"format must be one of {FORMATS}, got {given!r}")
        return given
    suffix = path.suffix.lower()
    for fmt, suffixes in (("jsonl", (".jsonl", ".ndjson", ".json")), ("csv", (".csv",)),
                          ("parquet", (".parquet", ".pq"))):
        if suffix in suffixes:
            return fmt
    raise InvalidInputError(f"cannot tell the format of {path} from its suffix: name it .jsonl, .csv or .parquet "
                            "(or pass the format)")


def require_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InvalidInputError("Parquet needs pyarrow, an optional extra: pip install 'sparsejit[parquet]' "
                                "(or use .jsonl / .csv files)") from None
    return pyarrow


def estimate_records(path: Path, fmt: str) -> int:
    """About how many rows the file holds, without parsing it (for a progress bar): Parquet's footer
    (exact), the non-blank lines of JSONL (exact), the lines of CSV after its header (more when quoted
    fields span lines)."""
    if fmt == "parquet":
        require_pyarrow()
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return max(0, lines - 1) if fmt == "csv" else lines


def read_records(path: Path, fmt: str) -> Iterator[dict[str, Any] | BadRecord]:
    """Every row of the file in order: a dict of its columns, or a `BadRecord`."""
    if fmt == "jsonl":
        yield from _read_jsonl(path)
    elif fmt == "csv":
        yield from _read_csv(path)
    else:
        yield from _read_parquet(path)


def _undecodable(record: dict[str, Any]) -> str | None:
    for key, value in record.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"column {key!r} holds bytes that are not UTF-8"
    return None


def _read_jsonl(path: Path) -> Iterator[dict[str, Any] | BadRecord]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        row = 0
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield BadRecord(row, f"not JSON: {exc}")
            else:
                if not isinstance(record, dict):
                    yield BadRecord(row, f"a JSON {type(record).__name__}, not an object")
                elif (why := _undecodable(record)) is not None:
                    yield BadRecord(row, why)
                else:
                    yield record
            row += 1


def _read_csv(path: Path) -> Iterator[dict[str, Any] | BadRecord]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for row, record in enumerate(csv.DictReader(f)):
            why = _undecodable(record)
            yield BadRecord(row, why) if why is not None else dict(record)


def _read_parquet(path: Path) -> Iterator[dict[str, Any] | BadRecord]:
    require_pyarrow()
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def write_part(rows: list[dict[str, Any]], schema: Any, path: Path, fmt: str) -> None:
    """Write one chunk's rows to `path` atomically (a temporary name, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "parquet":
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def join_parts(parts: list[Path], schema: Any, out: Path, fmt: str) -> None:
    """Concatenate the part files into `out` (written under a temporary name, then renamed)."""
    tmp = out.with_name(out.name + ".tmp")
    if fmt == "parquet":
        require_pyarrow()
        import pyarrow.parquet as pq

        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part, schema=schema))
    else:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part.read_bytes())
    tmp.replace(out)
