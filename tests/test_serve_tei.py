"""text-embeddings-inference compatible routes (/embed, /rerank, /tokenize, /info) on a real server,
with TEI's documented request / response shapes (docs/openapi.json of huggingface/text-embeddings-inference).
References: the embeddings and text-classification pipelines called in-process on the same inputs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sparsejit
from sparsejit.model_wheels import minilm_dir
from sparsejit.serve.app import create_app
from sparsejit.serve.config import EndpointConfig, ServerConfig
from sparsejit.serve.testing import ServerThread
from tests import zoo

pytest.importorskip("torch")  # the random cross-encoder checkpoint is drawn by transformers

TEXTS = ["A man is eating food.", "A man is riding a horse.", "sparsejit compiles transformers for CPUs"]
QUERY = "Who is eating?"


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label BertForSequenceClassification (random weights) with the MiniLM tokenizer (same vocab)."""
    directory = tmp_path_factory.mktemp("reranker")
    shutil.copytree(zoo.random_checkpoint("bert", "sequence_classification", num_labels=1), directory,
                    dirs_exist_ok=True)
    shutil.copy(minilm_dir() / "tokenizer.json", directory / "tokenizer.json")
    return directory


@pytest.fixture(scope="module")
def server(reranker_dir: Path) -> Iterator[Any]:
    config = ServerConfig(max_client_batch_size=8, endpoints=[
        EndpointConfig(name="emb", task="embeddings", model=str(minilm_dir()), sequence_length=[16, 32],
                       max_batch_tokens=64),
        EndpointConfig(name="rank", task="text-classification", model=str(reranker_dir), batch_size=4,
                       sequence_length=[32])])
    with ServerThread(create_app(config)) as srv:
        srv.wait_ready()
        yield srv


def test_embed_equals_the_pipeline_normalised_or_raw(server: Any) -> None:
    pipe = sparsejit.Pipeline.create("embeddings", minilm_dir(), batch_size=4, sequence_length=[16, 32])
    default = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS})
    assert default.status_code == 200
    np.testing.assert_allclose(np.array(default.json()), pipe(TEXTS, normalize=True), atol=1e-6)
    raw = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS[0], "normalize": False}).json()
    assert len(raw) == 1  # TEI answers a list of vectors even for one string
    np.testing.assert_allclose(np.array(raw[0]), pipe(TEXTS[0], normalize=False), atol=1e-6)
    assert abs(np.linalg.norm(raw[0]) - 1.0) > 0.1  # the pooled output itself, not unit length


def test_embed_too_long_is_413_unless_truncated(server: Any) -> None:
    long_text = "word " * 100
    refused = httpx.post(f"{server.url}/embed", json={"inputs": [long_text]})
    assert refused.status_code == 413
    assert refused.json()["error_type"] == "Validation" and "102 tokens" in refused.json()["error"]
    for direction in ("Right", "Left"):
        cut = httpx.post(f"{server.url}/embed", json={"inputs": [long_text + "end"], "truncate": True,
                                                       "truncation_direction": direction})
        assert cut.status_code == 200 and len(cut.json()[0]) == 384


def test_more_inputs_than_max_client_batch_size_is_413(server: Any) -> None:
    too_many = httpx.post(f"{server.url}/embed", json={"inputs": ["a text"] * 9})
    assert too_many.status_code == 413 and too_many.json()["error_type"] == "Validation"
    assert "9 inputs in one request; at most 8" in too_many.json()["error"]
    native = httpx.post(f"{server.url}/v2/models/emb/infer", json={"inputs": ["a text"] * 9})
    assert native.status_code == 413 and "at most 8" in native.json()["detail"]
    assert httpx.post(f"{server.url}/embed", json={"inputs": ["a text"] * 8}).status_code == 200


def test_rerank_equals_the_classification_pipeline(server: Any, reranker_dir: Path) -> None:
    pipe = sparsejit.Pipeline.create("text-classification", reranker_dir, batch_size=4, sequence_length=[32])
    pairs = [{"text": QUERY, "text_pair": t} for t in TEXTS]
    expected = [r[0]["score"] for r in pipe(pairs, top_k=None)]  # sigmoid of the single logit
    raw_expected = [r[0]["score"] for r in pipe(pairs, top_k=None, function_to_apply="none")]
    ranks = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": TEXTS, "return_text": True}).json()
    assert [r["index"] for r in ranks] == sorted(range(3), key=lambda i: -expected[i])
    for r in ranks:
        assert abs(r["score"] - expected[r["index"]]) < 1e-6 and r["text"] == TEXTS[r["index"]]
    raw = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True}).json()
    assert {r["index"]: round(r["score"], 5) for r in raw} == {i: round(s, 5) for i, s in enumerate(raw_expected)}
    assert all("text" not in r or r["text"] is None for r in raw)


def test_tokenize_and_info(server: Any) -> None:
    tokens = httpx.post(f"{server.url}/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "Hello", "world", "[SEP]"]  # slices of the input
    assert [t["special"] for t in tokens[0]] == [True, False, False, True]
    assert tokens[0][1]["start"] == 0 and tokens[0][1]["stop"] == 5 and tokens[0][0]["start"] is None
    info = httpx.get(f"{server.url}/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 32 and info["version"] == sparsejit.__version__
    assert info["max_batch_tokens"] == 64 and info["max_client_batch_size"] == 8


def test_token_budget_batches_concurrent_requests_of_mixed_lengths(server: Any) -> None:
    """The emb endpoint batches by a budget of 64 padded positions: concurrent requests of 3 to 30 tokens
    each get the vector a count-batched pipeline gives, and no batch went past the budget."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client.parser import text_string_to_metric_families

    def batches() -> tuple[float, float]:  # (batches in all, batches of <= 64 padded positions) so far
        page = httpx.get(f"{server.url}/metrics").text
        samples = {(s.name, s.labels.get("le")): s.value for f in text_string_to_metric_families(page)
                   if f.name == "sparsejit_batch_tokens" for s in f.samples if s.labels.get("endpoint") == "emb"}
        return samples[("sparsejit_batch_tokens_count", None)], samples[("sparsejit_batch_tokens_bucket", "64.0")]

    pipe = sparsejit.Pipeline.create("embeddings", minilm_dir(), batch_size=4, sequence_length=[16, 32])
    texts = [" ".join(["word"] * n) for n in (1, 28, 5, 12, 3, 20, 9, 25, 2, 14, 7, 17) * 2]
    before = batches()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda t: httpx.post(f"{server.url}/embed", json={"inputs": t}, timeout=60), texts))
    assert all(a.status_code == 200 for a in answers)
    np.testing.assert_allclose(np.array([a.json()[0] for a in answers]), pipe(texts, normalize=True), atol=1e-6)
    after = batches()
    assert after[0] > before[0]
    assert after[1] - before[1] == after[0] - before[0]
