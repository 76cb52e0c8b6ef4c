"""`sparsejit run` / `sparsejit.batch.run`: output rows equal the pipeline's results row for row (the
reference is the same pipeline called directly), bad rows go to the errors file, an interrupted run
resumes without computing any chunk twice, and Parquet / JSONL / CSV round-trip."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sparsejit
from sparsejit.batch import Columns, run
from sparsejit.batch import runner as R
from sparsejit.model_wheels import minilm_dir
from sparsejit.tasks import suggest_buckets
from tests import zoo

pq = pytest.importorskip("pyarrow.parquet")

TEXTS = [f"text number {i} " + "word " * (i % 23) for i in range(57)]


def _jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _records() -> list[Any]:
    records: list[Any] = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(TEXTS)]
    records[5] = {"id": "doc-5", "text": ""}  # empty text
    records[9] = {"id": "doc-9", "text": 42}  # not text
    records[11] = "{not json"  # a broken line
    return records


@pytest.fixture(scope="module")
def embeddings_pipe() -> Any:
    return sparsejit.Pipeline.create("embeddings", minilm_dir(), batch_size=8, sequence_length=[16, 32])


@pytest.mark.parametrize("workers", [1, 2])
def test_embeddings_rows_equal_the_pipeline_and_bad_rows_are_reported(
        tmp_path: Path, embeddings_pipe: Any, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """In this process or in 2 worker processes: the same rows, and the input is parsed once (the progress
    bar's total is a byte scan)."""
    source = _jsonl(tmp_path / "in.jsonl", _records())
    opened = []
    real = R.read_records
    monkeypatch.setattr(R, "read_records", lambda *a: (opened.append(a), real(*a))[1])
    summary = run("embeddings", source, tmp_path / "out.parquet", model_path=minilm_dir(), batch_size=8,
                  sequence_length=[16, 32], chunk_rows=10, progress=False, workers=workers)
    assert len(opened) == 1
    assert (summary.rows, summary.written, summary.errors) == (57, 54, 3)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("embedding").type.list_size == 384  # fixed-size float lists
    got = table.to_pylist()
    good = [i for i in range(57) if i not in (5, 9, 11)]
    assert [r["row"] for r in got] == good and [r["id"] for r in got] == [f"doc-{i}" for i in good]
    expected = embeddings_pipe([TEXTS[i] for i in good])
    np.testing.assert_allclose(np.array([r["embedding"] for r in got]), expected, atol=1e-6)
    errors = [json.loads(line) for line in Path(summary.errors_file).read_text().splitlines()]
    assert [(e["row"], e["id"]) for e in errors] == [(5, "doc-5"), (9, "doc-9"), (11, None)]
    assert "empty" in errors[0]["reason"] and "int" in errors[1]["reason"] and "JSON" in errors[2]["reason"]
    assert not (tmp_path / "out.parquet.parts").exists()


def test_interrupted_run_resumes_without_recomputing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out.jsonl"
    kwargs = {"model_path": minilm_dir(), "batch_size": 8, "sequence_length": [32], "chunk_rows": 10,
              "progress": False}
    full = run("embeddings", source, tmp_path / "full.jsonl", **kwargs)
    computed: list[int] = []
    real = R._run_chunk

    def killed_after_three(pipe, task, chunk, cols, id_column):  # type: ignore[no-untyped-def]
        if len(computed) == 3:
            raise KeyboardInterrupt  # as if the process were killed mid-run
        computed.append(chunk[0][0])
        return real(pipe, task, chunk, cols, id_column)

    monkeypatch.setattr(R, "_run_chunk", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        run("embeddings", source, out, **kwargs)
    assert not out.exists() and len(list((tmp_path / "out.jsonl.parts").glob("*.done"))) == 3
    computed.clear()
    monkeypatch.setattr(R, "_run_chunk", lambda *a: (computed.append(a[2][0][0]), real(*a))[1])
    summary = run("embeddings", source, out, **kwargs)
    assert computed == [30, 40, 50]  # only the chunks not finished before
    assert summary.resumed_chunks == 3 and summary.written == 57
    first, second = ([json.loads(line) for line in p.read_text().splitlines()] for p in (tmp_path / "full.jsonl", out))
    assert [r["row"] for r in second] == list(range(57))
    np.testing.assert_allclose([r["embedding"] for r in second], [r["embedding"] for r in first], atol=1e-6)
    assert full.written == 57


def test_changed_settings_refuse_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS[:20]])
    monkeypatch.setattr(R, "join_parts", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run("embeddings", source, tmp_path / "o.jsonl", model_path=minilm_dir(), sequence_length=[32],
            chunk_rows=10, progress=False)
    monkeypatch.undo()
    with pytest.raises(sparsejit.InvalidInputError, match="chunk_rows"):
        run("embeddings", source, tmp_path / "o.jsonl", model_path=minilm_dir(), sequence_length=[32],
            chunk_rows=5, progress=False)
    summary = run("embeddings", source, tmp_path / "o.jsonl", model_path=minilm_dir(), sequence_length=[32],
                  chunk_rows=5, progress=False, restart=True)
    assert summary.written == 20 and summary.resumed_chunks == 0


def test_text_classification_from_csv_with_the_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sparsejit.serve.cli import main

    directory = zoo.shared_model("minilm-sentiment")
    with open(zoo.shared_dir("minilm-sentiment") / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:40]
    source = tmp_path / "tweets.csv"
    with open(source, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows({"id": i, "text": r["text"]} for i, r in enumerate(rows))
    result = CliRunner().invoke(main, ["run", "--task", "sentiment", "--model-path", str(directory), "--input",
                                       str(source), "--output", str(tmp_path / "labels.jsonl"), "-q"])
    assert result.exit_code == 0, result.output
    assert "40 of 40 rows" in result.output
    got = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    pipe = sparsejit.Pipeline.create("sentiment", directory, sequence_length=[64])
    expected = pipe([r["text"] for r in rows])
    assert [g["id"] for g in got] == [str(i) for i in range(40)]  # CSV values are text
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-5)


def test_ner_on_wnut_sentences_equals_the_pipeline(tmp_path: Path) -> None:
    """The first 200 WNUT-16 sentences (the whole 2,394 run in bench/batch_run.py)."""
    conll = zoo.SHARED_DIR / "data" / "wnut16-train.conll"
    if not conll.is_file():
        pytest.skip(f"{conll} absent (../shared exists only for developers and CI)")
    sentences, words = [], []
    for line in conll.read_text().splitlines():
        if line.strip():
            words.append(line.split("\t")[0])
        elif words:
            sentences.append(" ".join(words))
            words = []
    sentences = sentences[:200]
    table = __import__("pyarrow").table({"text": sentences})
    pq.write_table(table, tmp_path / "wnut.parquet")
    summary = run("ner", tmp_path / "wnut.parquet", tmp_path / "entities.parquet", batch_size=16,
                  sequence_length=[64], progress=False)
    assert summary.written == 200 and summary.errors == 0
    got = pq.read_table(tmp_path / "entities.parquet").to_pylist()
    pipe = sparsejit.Pipeline.create("ner", batch_size=16, sequence_length=[64])
    expected = pipe(sentences)
    assert len(got) == len(expected)
    for row, entities in zip(got, expected, strict=True):
        assert [(e["label"], e["word"], e["start"], e["end"]) for e in row["entities"]] == \
            [(e.get("entity_group", e.get("entity")), e["word"], e["start"], e["end"]) for e in entities]
        np.testing.assert_allclose([e["score"] for e in row["entities"]], [e["score"] for e in entities], atol=1e-6)


def test_qa_columns_and_bucket_suggestion(tmp_path: Path) -> None:
    directory = zoo.shared_model("minilm-squad")
    context = "The Eiffel Tower is in Paris. It was built by the company of Gustave Eiffel from 1887 to 1889."
    source = _jsonl(tmp_path / "qa.jsonl", [{"q": "Where is the Eiffel Tower?", "c": context},
                                            {"q": "Who built it?", "c": context}])
    summary = run("qa", source, tmp_path / "answers.jsonl", model_path=directory, progress=False,
                  columns=Columns(question="q", context="c"))
    got = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    pairs = [("Where is the Eiffel Tower?", context), ("Who built it?", context)]
    assert summary.sequence_lengths == suggest_buckets(pairs, directory)  # buckets from the data
    pipe = sparsejit.Pipeline.create("qa", directory, sequence_length=summary.sequence_lengths)
    expected = pipe(question=["Where is the Eiffel Tower?", "Who built it?"], context=context)
    assert [g["answer"] for g in got] == [e["answer"] for e in expected]
    assert [(g["start"], g["end"]) for g in got] == [(e["start"], e["end"]) for e in expected]
