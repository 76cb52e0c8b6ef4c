"""Pipeline machinery: task registry, model-path resolution, bucketing / chunking, suggest_buckets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zoo

import sparsejit
from sparsejit import Pipeline
from sparsejit.errors import InvalidInputError, ModelLoadError
from sparsejit.tasks import (
    available_tasks,
    canonical_task,
    get_pipeline_class,
    load_tokenizer,
    suggest_buckets,
)
from sparsejit.tasks.base import resolve_model_files


@pytest.mark.parametrize(("name", "task"), [
    ("question_answering", "question_answering"), ("QA", "question_answering"),
    ("question-answering", "question_answering"), ("token_classification", "token_classification"),
    ("NER", "token_classification"), ("Token-Classification", "token_classification"),
    ("text_classification", "text_classification"), ("sentiment-analysis", "text_classification"),
    ("Sentiment", "text_classification"),
    ("transformers_embedding_extraction", "transformers_embedding_extraction"),
    ("embedding-extraction", "transformers_embedding_extraction"),
    ("EMBEDDINGS", "transformers_embedding_extraction"),
])
def test_task_aliases(name: str, task: str) -> None:
    assert canonical_task(name) == task
    assert name.lower().replace("-", "_") in available_tasks()


def test_registry_classes_and_unknown_task() -> None:
    assert get_pipeline_class("ner").__name__ == "TokenClassificationPipeline"
    assert get_pipeline_class("sentiment").__name__ == "TextClassificationPipeline"
    assert get_pipeline_class("embeddings").__name__ == "EmbeddingExtractionPipeline"
    with pytest.raises(InvalidInputError, match="unknown task"):
        Pipeline.create("translation", "nowhere")
    with pytest.raises(InvalidInputError, match="no default model"):
        Pipeline.create("sentiment")
    assert sparsejit.Pipeline is Pipeline


def test_model_path_resolution(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_files(tmp_path / "missing")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        resolve_model_files(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert resolve_model_files(tmp_path).model == tmp_path / "model.onnx"
    assert resolve_model_files(tmp_path / "model.onnx").directory == tmp_path


@pytest.fixture(scope="module")
def sentiment_dir() -> Path:
    return zoo.shared_model("minilm-sentiment")


def test_onnx_file_beside_tokenizer_and_baked_settings_ignored(sentiment_dir: Path, tmp_path: Path) -> None:
    """An .onnx file with another name works; tokenizer.json's baked truncation (64) is overridden."""
    for f in ("config.json", "tokenizer.json"):
        shutil.copy2(sentiment_dir / f, tmp_path / f)
    (tmp_path / "classifier.onnx").symlink_to(sentiment_dir / "model.onnx")
    pipe = Pipeline.create("sentiment", tmp_path / "classifier.onnx", sequence_length=[16, 96])
    long_text = "the flight was long " * 40
    assert len(pipe.tokenizer.encode(long_text).ids) == 96
    assert len(pipe.tokenizer.encode("short").ids) == 3  # no padding baked in
    assert pipe([long_text, "short"])  # truncated to the largest bucket, no SequenceTooLongError
    with pytest.raises(InvalidInputError, match="max_position_embeddings"):
        Pipeline.create("sentiment", sentiment_dir, sequence_length=1024)
    with pytest.raises(InvalidInputError, match="unexpected"):
        Pipeline.create("sentiment", sentiment_dir, sequence_length=16, bogus_option=1)


def test_buckets_and_chunking_give_same_results(sentiment_dir: Path) -> None:
    texts = [("word " * n).strip() for n in (1, 3, 40, 7, 90, 2, 12, 25, 60, 5, 1)]
    one = Pipeline.create("sentiment", sentiment_dir, batch_size=1, sequence_length=128)
    many = Pipeline.create("sentiment", sentiment_dir, batch_size=4, sequence_length=[16, 32, 64, 128])
    assert many.engine.buckets == [(4, 16), (4, 32), (4, 64), (4, 128)]
    a, b = one(texts, top_k=None), many(texts, top_k=None)
    for x, y in zip(a, b, strict=True):
        assert [d["label"] for d in x] == [d["label"] for d in y]
        np.testing.assert_allclose([d["score"] for d in x], [d["score"] for d in y], atol=1e-5)


def test_token_budget_batches_stay_within_the_budget_and_give_same_results(sentiment_dir: Path) -> None:
    texts = [("word " * n).strip() for n in (1, 3, 40, 7, 90, 2, 12, 25, 60, 5, 1, 14, 13, 2, 2, 3)]
    one = Pipeline.create("sentiment", sentiment_dir, batch_size=1, sequence_length=128)
    budget = Pipeline.create("sentiment", sentiment_dir, sequence_length=[16, 64, 128], max_batch_tokens=128)
    assert budget.engine.buckets == [(1, 16), (2, 16), (4, 16), (8, 16), (1, 64), (2, 64), (1, 128)]
    calls = []
    run = budget.engine.run
    budget.engine.run = lambda feed: calls.append(feed["input_ids"].shape) or run(feed)
    a, b = one(texts, top_k=None), budget(texts, top_k=None)
    for x, y in zip(a, b, strict=True):
        assert [d["label"] for d in x] == [d["label"] for d in y]
        np.testing.assert_allclose([d["score"] for d in x], [d["score"] for d in y], atol=1e-5)
    assert sum(rows for rows, _ in calls) == len(texts)
    for rows, seq in calls:  # every call fits a bucket of at most 128 padded positions
        assert any(b >= rows and s >= seq and b * s <= 128 for b, s in budget.engine.buckets), (rows, seq)
    # 12 texts of <= 16 tokens fill a batch of 8 then one of 4; a batch never spans two lengths
    assert [rows for rows, seq in calls if seq <= 16] == [8, 4]
    assert [rows for rows, seq in calls if seq > 16] == [2, 1, 1]  # 27+42 tokens at 64, 62 at 64, 92 at 128
    with pytest.raises(InvalidInputError, match="max_batch_tokens 100 is smaller than the sequence length 128"):
        Pipeline.create("sentiment", sentiment_dir, sequence_length=[16, 128], max_batch_tokens=100)


def test_suggest_buckets(sentiment_dir: Path) -> None:
    texts = ["hi"] * 50 + ["a somewhat longer tweet about a delayed flight and lost luggage"] * 40 + \
        ["word " * 600] * 10
    tok = load_tokenizer(sentiment_dir)
    assert suggest_buckets(texts, tok) == [16, 512]  # median 3 -> 16; 0.9 quantile 14 -> 16; max capped
    assert suggest_buckets(texts, sentiment_dir, quantiles=(0.5, 0.9), multiple=8) == [8, 16]
    assert suggest_buckets(texts, tok, max_length=128) == [16, 128]
    with pytest.raises(InvalidInputError):
        suggest_buckets([], tok)
