"""Dask path: `run_on_dask` with 2 local worker processes on a Parquet file of 2,000 texts gives the rows
of `sparsejit run` on the same file; `SparsejitPartitions` in `map_partitions` (threaded scheduler) gives
the text-classification pipeline's answers, with the columns its `meta` declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sparsejit
from sparsejit.batch import run
from tests import zoo

dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

BUCKETS = [32, 64]


def test_dask_worker_processes_give_the_rows_of_sparsejit_run(tmp_path: Path) -> None:
    from sparsejit.integrations.dask import run_on_dask

    texts = [f"sentence {i}: " + "lorem ipsum " * (i % 9) for i in range(2000)]
    texts[7] = ""  # a bad row: reported, not fatal
    pq.write_table(pa.table({"id": list(range(2000)), "text": texts}), tmp_path / "texts.parquet")
    reference = run("embeddings", tmp_path / "texts.parquet", tmp_path / "ref.parquet", sequence_length=BUCKETS,
                    batch_size=16, progress=False)
    assert reference.errors == 1
    written = run_on_dask("embeddings", tmp_path / "texts.parquet", tmp_path / "dask_out", num_workers=2,
                          predictor_kwargs={"num_threads": 1, "sequence_length": BUCKETS})
    assert written == 2000
    rows = sorted(pq.read_table(tmp_path / "dask_out").to_pylist(), key=lambda r: r["id"])
    expected = {r["id"]: r["embedding"] for r in pq.read_table(tmp_path / "ref.parquet").to_pylist()}
    assert rows[7]["error"] and "empty" in rows[7]["error"] and rows[7]["embedding"] is None
    assert rows[8]["text"] == texts[8]  # input columns are carried through
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 1999 and [r["id"] for r in good] == sorted(expected)
    np.testing.assert_allclose(np.array([r["embedding"] for r in good]),
                               np.array([expected[r["id"]] for r in good]), atol=1e-5)


def test_map_partitions_with_meta_gives_the_pipeline_answers() -> None:
    import dask

    from sparsejit.integrations.dask import SparsejitPartitions

    model = zoo.shared_model("minilm-sentiment")
    texts = ["the flight was great", "lost my luggage again", "", "crew were friendly and helpful",
             "delayed three hours with no word"] * 8
    frame = dd.from_pandas(pd.DataFrame({"tweet": texts, "n": range(len(texts))}), npartitions=4)
    predictor = SparsejitPartitions("sentiment", str(model), text_column="tweet", sequence_length=[32])
    result = frame.map_partitions(predictor, meta=predictor.meta(frame._meta))
    with dask.config.set(scheduler="threads", num_workers=2):
        got = result.compute()
    assert list(got.columns) == ["tweet", "n", "label", "score", "error"]
    assert dict(got.dtypes) == dict(result._meta.dtypes)  # meta says what the partitions hold
    assert got["n"].tolist() == list(range(len(texts)))
    pipe = sparsejit.Pipeline.create("sentiment", model, sequence_length=[32])
    for row in got.itertuples():
        if not row.tweet:
            assert "empty" in row.error and pd.isna(row.label)
            continue
        (want,) = pipe(row.tweet)
        assert pd.isna(row.error) and row.label == want["label"] and abs(row.score - want["score"]) < 1e-6
