"""Dask path: `run_on_dask` with 2 local worker processes on a Parquet file of 2,000 texts gives the rows
of `sparsejit run` on the same file; `SparsejitPartitions` in `map_partitions` (threaded scheduler) gives
the text-classification pipeline's answers, with the columns its `meta` declares."""

from __future__ import annotations

from pathlib import Path

import pytest

import sparsejit
from tests import zoo
from tests.scale_out import BUCKETS, assert_rows_of_sparsejit_run, texts_file

dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def test_dask_worker_processes_give_the_rows_of_sparsejit_run(tmp_path: Path) -> None:
    from sparsejit.integrations.dask import run_on_dask

    source, texts = texts_file(tmp_path)
    written = run_on_dask("embeddings", source, tmp_path / "dask_out", num_workers=2,
                          predictor_kwargs={"num_threads": 1, "sequence_length": BUCKETS})
    assert written == 2000
    assert_rows_of_sparsejit_run(tmp_path / "dask_out", tmp_path, texts)


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
