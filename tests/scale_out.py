"""Shared by the Ray and Dask tests: a Parquet file of 2,000 texts (one bad), `sparsejit run`'s rows on it
as the reference, and the check that a scale-out path's output directory holds the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsejit.batch import run

BUCKETS = [32, 64]
ROWS = 2000


def texts_file(tmp_path: Path) -> tuple[Path, list[str]]:
    """texts.parquet (id, text; row 7 empty) and `sparsejit run`'s output on it, ref.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"sentence {i}: " + "lorem ipsum " * (i % 9) for i in range(ROWS)]
    texts[7] = ""  # a bad row: reported, not fatal
    pq.write_table(pa.table({"id": list(range(ROWS)), "text": texts}), tmp_path / "texts.parquet")
    reference = run("embeddings", tmp_path / "texts.parquet", tmp_path / "ref.parquet", sequence_length=BUCKETS,
                    batch_size=16, progress=False)
    assert reference.errors == 1
    return tmp_path / "texts.parquet", texts


def assert_rows_of_sparsejit_run(out_dir: Path, tmp_path: Path, texts: list[str]) -> None:
    """Every row of `out_dir` (any order) has the reference's embedding for its id; row 7 its error."""
    import pyarrow.parquet as pq

    rows = sorted(pq.read_table(out_dir).to_pylist(), key=lambda r: r["id"])
    expected = {r["id"]: r["embedding"] for r in pq.read_table(tmp_path / "ref.parquet").to_pylist()}
    assert rows[7]["error"] and "empty" in rows[7]["error"] and rows[7]["embedding"] is None
    assert rows[8]["text"] == texts[8]  # input columns are carried through
    good = [r for r in rows if r["error"] is None]
    assert len(good) == ROWS - 1 and [r["id"] for r in good] == sorted(expected)
    np.testing.assert_allclose(np.array([r["embedding"] for r in good]),
                               np.array([expected[r["id"]] for r in good]), atol=1e-5)
