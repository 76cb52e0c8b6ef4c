"""The REST server over real HTTP: uvicorn on a free loopback port, httpx as the client.

One server with four endpoints from a YAML config (every task: text classification, question answering,
token classification, embeddings — the last two on their default models) and one single-endpoint server
with an API key. Answers are compared with the endpoint's own pipeline called in-process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from zoo import shared_model

from sparsejit.serve.app import create_app
from sparsejit.serve.config import EndpointConfig, ServerConfig, load_config
from sparsejit.serve.state import build_pipeline
from sparsejit.serve.testing import ServerThread

QA_CONTEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
              "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
              "from 1887 to 1889.")


def wait_ready(url: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.05)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Value of one sample in a Prometheus text page (0 when absent)."""
    want = {k: v for k, v in labels.items()}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == want:
            return float(m.group(3))
    return 0.0


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sentiment, squad = shared_model("minilm-sentiment"), shared_model("minilm-squad")
    path = tmp_path_factory.mktemp("serve") / "endpoints.yaml"
    path.write_text(yaml.safe_dump({
        "max_wait_ms": 20,
        "endpoints": [
            {"name": "sentiment", "task": "text-classification", "model": str(sentiment), "batch_size": 8,
             "sequence_length": 64},
            {"name": "qa", "task": "question-answering", "model": str(squad), "batch_size": 4,
             "sequence_length": [64, 128]},
            {"name": "ner", "task": "ner", "batch_size": 4, "sequence_length": 64},
            {"name": "embeddings", "task": "embeddings", "batch_size": 4, "sequence_length": 64,
             "kwargs": {"normalize": True}},
        ],
    }))
    return path


@pytest.fixture(scope="module")
def multi(config_file: Path) -> Any:
    """The four-endpoint server; compiling waits for ``gate`` so readiness can be seen before it."""
    gate = threading.Event()

    def gated_factory(endpoint: EndpointConfig, server: ServerConfig) -> Any:
        assert gate.wait(300), "test never opened the compile gate"
        return build_pipeline(endpoint, server)

    server = ServerThread(create_app(load_config(config_file), gated_factory)).start()
    server.gate = gate
    yield server
    gate.set()
    server.stop()


@pytest.fixture(scope="module")
def ready(multi: Any) -> Any:
    multi.gate.set()
    wait_ready(multi.url)
    return multi


def pipeline_of(server: Any, name: str) -> Any:
    return server.app.state.sparsejit.endpoints[name].pipeline


# ------------------------------------------------------------------------------------ readiness & info


def test_readiness_before_and_after_compile(multi: Any) -> None:
    url = multi.url
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    r = httpx.get(f"{url}/v2/health/ready")
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["ready"] is False
    r = httpx.post(f"{url}/v2/models/sentiment/infer", json={"inputs": "hello"})
    assert r.status_code == 503 and "retry-after" in r.headers
    models = httpx.get(f"{url}/v2/models").json()["models"]
    assert {m["name"] for m in models} == {"sentiment", "qa", "ner", "embeddings"}
    assert not any(m["ready"] for m in models)
    text = httpx.get(f"{url}/metrics").text
    assert metric_value(text, "sparsejit_endpoint_ready", endpoint="sentiment") == 0

    multi.gate.set()
    wait_ready(url)
    body = httpx.get(f"{url}/v2/health/ready").json()
    assert body["ready"] and set(body["endpoints"].values()) == {"ready"}
    models = httpx.get(f"{url}/v2/models").json()["models"]
    by_name = {m["name"]: m for m in models}
    assert all(m["ready"] for m in models)
    assert by_name["qa"]["buckets"] == [[4, 64], [4, 128]]
    assert by_name["sentiment"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert httpx.get(f"{url}/v2/models/qa").json()["task"] == "question_answering"
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404
    text = httpx.get(f"{url}/metrics").text
    assert metric_value(text, "sparsejit_endpoint_ready", endpoint="sentiment") == 1


def test_predict_only_for_a_single_endpoint(ready: Any) -> None:
    assert httpx.post(f"{ready.url}/predict", json={"inputs": "x"}).status_code in (404, 405)
    paths = httpx.get(f"{ready.url}/openapi.json").json()["paths"]
    assert {"/v2/models/sentiment/infer", "/v2/models/qa/infer", "/v2/models/ner/infer",
            "/v2/models/embeddings/infer"} <= set(paths)


# ------------------------------------------------------------------------------------------ every task


def test_text_classification(ready: Any) -> None:
    texts = ["I loved this film, wonderful acting.", "Dreadful. A waste of two hours."]
    r = httpx.post(f"{ready.url}/v2/models/sentiment/infer", json={"inputs": texts})
    assert r.status_code == 200, r.text
    got = r.json()
    expected = pipeline_of(ready, "sentiment")(texts)
    assert [g["label"] for g in got] == [e["label"] for e in expected] == ["POSITIVE", "NEGATIVE"]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], rtol=1e-4)
    # per-call option, single text, pair input
    r = httpx.post(f"{ready.url}/v2/models/sentiment/infer", json={"inputs": "great", "top_k": None})
    assert r.status_code == 200 and len(r.json()) == 2
    pair = {"text": "The cat sat.", "text_pair": "A cat was sitting."}
    r = httpx.post(f"{ready.url}/v2/models/sentiment/infer", json={"inputs": [pair]})
    assert r.status_code == 200 and len(r.json()) == 1


def test_text_classification_single_pair(ready: Any) -> None:
    pair = {"text": "The cat sat.", "text_pair": "A cat was sitting."}
    r = httpx.post(f"{ready.url}/v2/models/sentiment/infer", json={"inputs": pair})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"label", "score"}  # one pair answers one {label, score}, as transformers


def test_question_answering(ready: Any) -> None:
    body = {"question": "Who designed the tower?", "context": QA_CONTEXT}
    r = httpx.post(f"{ready.url}/v2/models/qa/infer", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert "Gustave" in got["answer"] or "Eiffel" in got["answer"]
    assert QA_CONTEXT[got["start"]:got["end"]] == got["answer"]
    expected = pipeline_of(ready, "qa")(question=body["question"], context=QA_CONTEXT)
    assert got["answer"] == expected["answer"] and math.isclose(got["score"], expected["score"], rel_tol=1e-4)
    r = httpx.post(f"{ready.url}/v2/models/qa/infer",
                   json={"question": ["When was it built?", "Where is it?"], "context": QA_CONTEXT,
                         "top_k": 2})
    assert r.status_code == 200 and [len(a) for a in r.json()] == [2, 2]


def test_token_classification(ready: Any) -> None:
    text = "My name is John Smith and my email is john@example.com"
    r = httpx.post(f"{ready.url}/v2/models/ner/infer", json={"inputs": text})
    assert r.status_code == 200, r.text
    got = r.json()
    expected = pipeline_of(ready, "ner")(text)
    assert [(e["entity"], e["start"], e["end"]) for e in got] == \
        [(e["entity"], e["start"], e["end"]) for e in expected]
    assert any("NAME" in e["entity"] for e in got)


def test_embeddings_default_model_with_endpoint_kwargs(ready: Any) -> None:
    r = httpx.post(f"{ready.url}/v2/models/embeddings/infer", json={"inputs": ["a cat", "a dog", "stocks"]})
    assert r.status_code == 200, r.text
    vectors = np.asarray(r.json())
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)  # kwargs normalize: true
    expected = pipeline_of(ready, "embeddings")(["a cat", "a dog", "stocks"])
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    r = httpx.post(f"{ready.url}/v2/models/embeddings/infer", json={"inputs": "one", "normalize": False})
    assert r.status_code == 200 and len(r.json()) == 384


# ------------------------------------------------------------------------------------------ bad input


def test_client_errors_are_clean(ready: Any) -> None:
    url = f"{ready.url}/v2/models/sentiment/infer"
    cases = [
        (httpx.post(url, json={"inputz": "x"}), 422),                            # schema: missing field
        (httpx.post(url, json={"inputs": 3}), 422),                              # schema: wrong type
        (httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 422),
        (httpx.post(url, json={"inputs": "x", "top_k": -3}), 400),               # unusable option
        (httpx.post(f"{ready.url}/v2/models/qa/infer",
                    json={"question": ["a", "b"], "context": ["c", "d", "e"]}), 400),  # 2 vs 3
        (httpx.post(f"{ready.url}/v2/models/nope/infer", json={"inputs": "x"}), 404),
        (httpx.get(url), 405),
    ]
    for response, code in cases:
        assert response.status_code == code, (code, response.text)
        assert "Traceback" not in response.text and "detail" in response.json()
    big = httpx.post(url, json={"inputs": ["x" * 1000] * 2000})  # ~2 MB > the 1 MiB default
    assert big.status_code == 413
    # the server still answers, and the errors are in the metrics
    assert httpx.post(url, json={"inputs": "fine"}).status_code == 200
    text = httpx.get(f"{ready.url}/metrics").text
    assert metric_value(text, "sparsejit_errors_total", endpoint="sentiment", code="422") >= 3
    assert metric_value(text, "sparsejit_errors_total", endpoint="sentiment", code="400") >= 1


def test_too_long_inputs_are_refused_unless_the_request_or_server_truncates(ready: Any, config_file: Path) -> None:
    """Native routes never cut silently: 413 naming the token count and the limit; ``truncate: true`` in
    the request, or a server started with auto_truncate, cuts to the largest bucket."""
    long_text = "the flight was delayed again " * 2000  # ~50,000 characters
    for name in ("sentiment", "embeddings"):
        refused = httpx.post(f"{ready.url}/v2/models/{name}/infer", json={"inputs": [long_text, "short"]})
        assert refused.status_code == 413, refused.text
        assert re.search(r"input 0 has 1000\d tokens, more than 64 tokens", refused.json()["detail"]), refused.text
        cut = httpx.post(f"{ready.url}/v2/models/{name}/infer", json={"inputs": long_text, "truncate": True})
        assert cut.status_code == 200, cut.text
    pipe = pipeline_of(ready, "sentiment")
    config = load_config(config_file, auto_truncate=True)
    config = config.model_copy(update={"endpoints": config.endpoints[:1]})
    with ServerThread(create_app(config)) as server:
        server.wait_ready()
        auto = httpx.post(f"{server.url}/predict", json={"inputs": long_text})
        assert auto.status_code == 200, auto.text
        (want,) = pipe(long_text)  # the pipeline cuts at 64 tokens too
        assert auto.json()[0]["label"] == want["label"]
        assert math.isclose(auto.json()[0]["score"], want["score"], rel_tol=1e-5)


def test_a_bad_request_never_joins_a_batch(ready: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that parses but fails when tokenised is refused before it is queued; the good requests
    around it share one merged call and get the pipeline's answers. (A failure inside a merged engine call
    reruns each request alone: test_serve_batching.)

    The bad request is a question answering one: a question of 64 tokens leaves the 128-token window 61
    tokens of context, less than the default stride of 64, which only ``preprocess`` finds out. The worker
    is held on a "plug" request while the others arrive, so the good ones are certain to be gathered into
    one batch (batch_size 4), and a spy records every engine call."""
    endpoint = ready.app.state.sparsejit.endpoints["qa"]
    runner, batcher = endpoint.batcher.runner, endpoint.batcher
    original, calls, gate = runner.run_group, [], threading.Event()

    def spy(jobs: list[Any]) -> list[Any]:
        calls.append([job.request.model_dump(exclude_unset=True) for job in jobs])
        assert gate.wait(120), "test never opened the gate"
        return original(jobs)

    monkeypatch.setattr(runner, "run_group", spy)
    url = f"{ready.url}/v2/models/qa/infer"
    good = [{"question": q, "context": QA_CONTEXT}
            for q in ("Who designed the tower?", "Where is the tower?", "When was it built?")]
    long_question = " ".join(f"word{i}" for i in range(80)) + "?"
    bad = {"question": long_question, "context": " ".join([QA_CONTEXT] * 4)}
    bodies = [good[0], bad, *good[1:]]
    with cf.ThreadPoolExecutor(5) as pool:
        try:
            plug = pool.submit(httpx.post, url, json={"question": "What is it?", "context": QA_CONTEXT},
                               timeout=120)
            deadline = time.monotonic() + 60
            while not calls:  # the worker holds the plug
                assert time.monotonic() < deadline and not plug.done(), "the plug never reached the engine"
                time.sleep(0.01)
            futures = [pool.submit(httpx.post, url, json=b, timeout=120) for b in bodies]
            while batcher.queue.qsize() < len(good) or not futures[1].done():
                assert time.monotonic() < deadline, f"only {batcher.queue.qsize()} requests queued"
                time.sleep(0.01)
            assert futures[1].result().status_code == 400  # answered while the worker is still held
        finally:
            gate.set()
        responses = [f.result() for f in futures]
        assert plug.result().status_code == 200
    codes = [r.status_code for r in responses]
    assert codes == [200, 400, 200, 200], [r.text for r in responses]
    assert "doc_stride" in responses[1].json()["detail"]
    assert len(calls) == 2 and sorted(map(repr, calls[1])) == sorted(map(repr, good)), calls  # one merged call
    pipe = pipeline_of(ready, "qa")
    for body, r in zip(bodies, responses, strict=True):
        if r.status_code == 200:
            want = pipe(question=body["question"], context=body["context"])
            assert r.json()["answer"] == want["answer"]
            assert math.isclose(r.json()["score"], want["score"], rel_tol=1e-4)


# ------------------------------------------------------------------------------------------ concurrency


def test_concurrent_requests_are_batched_and_answered_correctly(ready: Any) -> None:
    url = ready.url
    before = httpx.get(f"{url}/metrics").text
    batches_before = metric_value(before, "sparsejit_batch_size_count", endpoint="sentiment")
    singles_before = metric_value(before, "sparsejit_batch_size_bucket", endpoint="sentiment", le="1")
    words = ["great", "awful", "boring", "superb", "terrible", "lovely", "bad", "fantastic"]
    texts = [f"The {i}th movie was {words[i % len(words)]}" + "!" * (i % 5) for i in range(72)]

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(client.post("/v2/models/sentiment/infer", json={"inputs": t})
                                          for t in texts))

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(texts)
    expected = pipeline_of(ready, "sentiment")(texts)
    for r, e in zip(responses, expected, strict=True):
        (got,) = r.json()
        assert got["label"] == e["label"]
        assert math.isclose(got["score"], e["score"], rel_tol=1e-4)
    after = httpx.get(f"{url}/metrics").text
    batches = metric_value(after, "sparsejit_batch_size_count", endpoint="sentiment") - batches_before
    singles = metric_value(after, "sparsejit_batch_size_bucket", endpoint="sentiment", le="1")
    singles -= singles_before
    assert batches < len(texts) and batches - singles > 0, "no dynamic batch held more than one request"
    assert metric_value(after, "sparsejit_batch_size_sum", endpoint="sentiment") >= len(texts)
    for name in ("sparsejit_requests_total", "sparsejit_request_latency_seconds", "sparsejit_queue_depth",
                 "sparsejit_batch_size"):
        assert f"# TYPE {name} " in after
    assert metric_value(after, "sparsejit_requests_total", endpoint="sentiment", code="200") >= len(texts)


# ------------------------------------------------------------------------------ single endpoint + auth


@pytest.fixture(scope="module")
def secured() -> Any:
    config = ServerConfig(api_key="s3cret", max_queue=2, max_body_bytes=4096, endpoints=[
        EndpointConfig(name="sentiment", task="sentiment", model=str(shared_model("minilm-sentiment")),
                       batch_size=2, sequence_length=64)])
    with ServerThread(create_app(config)) as server:
        wait_ready(server.url)
        yield server


def test_api_key(secured: Any) -> None:
    url = secured.url
    body = {"inputs": "nice"}
    assert httpx.post(f"{url}/predict", json=body).status_code == 401
    assert httpx.post(f"{url}/predict", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(f"{url}/v2/models").status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401
    for path in ("/health", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{url}{path}").status_code == 200
    r = httpx.post(f"{url}/predict", json=body, headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200 and r.json()[0]["label"] in ("POSITIVE", "NEGATIVE")
    r = httpx.post(f"{url}/v2/models/sentiment/infer", json=body, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert httpx.post(f"{url}/predict", json={"inputs": "y" * 5000},
                      headers={"X-API-Key": "s3cret"}).status_code == 413


def test_full_queue_answers_503_with_retry_after(secured: Any) -> None:
    headers = {"X-API-Key": "s3cret"}
    body = {"inputs": ["a long enough review of a film that takes the engine a while " * 3] * 6}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=secured.url, timeout=120, headers=headers) as client:
            return await asyncio.gather(*(client.post("/predict", json=body) for _ in range(24)))

    responses = asyncio.run(fire())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1" and "retry" in rejected.json()["detail"]
    text = httpx.get(f"{secured.url}/metrics", headers=headers).text
    assert metric_value(text, "sparsejit_rejected_total", endpoint="sentiment") == codes.count(503)


def test_docs_work_offline(secured: Any) -> None:
    pytest.importorskip("swagger_ui_bundle")
    html = httpx.get(f"{secured.url}/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    js = httpx.get(f"{secured.url}/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    spec = httpx.get(f"{secured.url}/openapi.json").json()
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("TextClassificationInput")
