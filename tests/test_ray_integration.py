"""Ray Data path: a local Ray cluster (2 CPUs), 2 actors, 2,000 texts from a Parquet file; the rows equal
those of `sparsejit run` on the same file (same model, same buckets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scale_out import BUCKETS, assert_rows_of_sparsejit_run, texts_file

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def test_ray_actors_give_the_rows_of_sparsejit_run(tmp_path: Path) -> None:
    from sparsejit.integrations.ray import run_on_ray

    source, texts = texts_file(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        written = run_on_ray("embeddings", source, tmp_path / "ray_out", concurrency=2,
                             batch_size=250, actor_cpus=0.5,
                             predictor_kwargs={"num_threads": 1, "sequence_length": BUCKETS})
    finally:
        ray.shutdown()
    assert written == 2000
    assert_rows_of_sparsejit_run(tmp_path / "ray_out", tmp_path, texts)
