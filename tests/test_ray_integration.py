"""Ray Data path: a local Ray cluster (2 CPUs), 2 actors, 2,000 texts from a Parquet file; the rows equal
those of `sparsejit run` on the same file (same model, same buckets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsejit.batch import run

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

BUCKETS = [32, 64]


def test_ray_actors_give_the_rows_of_sparsejit_run(tmp_path: Path) -> None:
    from sparsejit.integrations.ray import run_on_ray

    texts = [f"sentence {i}: " + "lorem ipsum " * (i % 9) for i in range(2000)]
    texts[7] = ""  # a bad row: reported, not fatal
    pq.write_table(pa.table({"id": list(range(2000)), "text": texts}), tmp_path / "texts.parquet")
    reference = run("embeddings", tmp_path / "texts.parquet", tmp_path / "ref.parquet", sequence_length=BUCKETS,
                    batch_size=16, progress=False)
    assert reference.errors == 1
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        written = run_on_ray("embeddings", tmp_path / "texts.parquet", tmp_path / "ray_out", concurrency=2,
                             batch_size=250, actor_cpus=0.5,
                             predictor_kwargs={"num_threads": 1, "sequence_length": BUCKETS})
    finally:
        ray.shutdown()
    assert written == 2000
    rows = sorted(pq.read_table(tmp_path / "ray_out").to_pylist(), key=lambda r: r["id"])
    expected = {r["id"]: r["embedding"] for r in pq.read_table(tmp_path / "ref.parquet").to_pylist()}
    assert rows[7]["error"] and "empty" in rows[7]["error"] and rows[7]["embedding"] is None
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 1999 and [r["id"] for r in good] == sorted(expected)
    np.testing.assert_allclose(np.array([r["embedding"] for r in good]),
                               np.array([expected[r["id"]] for r in good]), atol=1e-5)
