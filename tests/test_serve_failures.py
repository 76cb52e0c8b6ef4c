"""Failures a user can act on: a server whose models fail to load stops with one line (or, with
--allow-partial, serves the rest and says which failed); a corrupt model file is a typed error from every
entry point, never a raw protobuf traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import sparsejit
from sparsejit.model_wheels import minilm_dir
from sparsejit.serve.app import create_app
from sparsejit.serve.config import EndpointConfig, ServerConfig
from sparsejit.serve.testing import ServerThread

REPO = Path(__file__).resolve().parents[1]


def _corrupt_model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "corrupt"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"\x08\x07this is not protobuf" * 50)
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(minilm_dir() / name, directory / name)
    return directory


def _serve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sparsejit.serve.cli", "serve", "--port", "0", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_server_whose_only_model_fails_exits_with_one_line(case: str, tmp_path: Path) -> None:
    path = tmp_path / "nowhere" if case == "missing" else _corrupt_model_dir(tmp_path)
    done = _serve("--task", "sentiment", "--model-path", str(path))
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: endpoint 'sentiment' failed to load: ModelLoadError:"), last
    assert ("does not exist" if case == "missing" else "not a readable ONNX model") in last
    assert "Traceback" not in done.stderr


def test_allow_partial_serves_the_healthy_endpoint_and_names_the_failed_one(tmp_path: Path) -> None:
    good = EndpointConfig(name="emb", task="embeddings", model=str(minilm_dir()), sequence_length=16)
    bad = EndpointConfig(name="broken", task="sentiment", model=str(_corrupt_model_dir(tmp_path)))
    for allow in (True, False):
        app = create_app(ServerConfig(allow_partial=allow, endpoints=[good, bad]))
        fatal: list[str] = []
        app.state.sparsejit.on_fatal = fatal.append
        with ServerThread(app) as server:
            deadline = time.monotonic() + 300
            while app.state.sparsejit.endpoints["broken"].status != "failed" or \
                    app.state.sparsejit.endpoints["emb"].status not in ("ready", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            ready = httpx.get(f"{server.url}/v2/health/ready")
            assert ready.json()["endpoints"] == {"emb": "ready", "broken": "failed"}
            if allow:
                assert ready.status_code == 200 and not fatal
                reply = httpx.post(f"{server.url}/v2/models/emb/infer", json={"inputs": "still served"})
                assert reply.status_code == 200
                failed = httpx.post(f"{server.url}/v2/models/broken/infer", json={"inputs": "x"})
                assert failed.status_code == 503 and "failed to load" in failed.json()["detail"]
            else:
                assert ready.status_code == 503
                assert fatal and "endpoint 'broken' failed to load" in fatal[0] and "--allow-partial" in fatal[0]


def test_corrupt_model_is_a_typed_error_from_every_entry_point(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sparsejit.serve.cli import main

    directory = _corrupt_model_dir(tmp_path)
    with pytest.raises(sparsejit.ModelLoadError, match="not a readable ONNX model"):
        sparsejit.Pipeline.create("sentiment", directory)
    with pytest.raises(sparsejit.ModelLoadError, match="not a readable ONNX model"):
        sparsejit.Pipeline.create("embeddings", directory)
    with pytest.raises(sparsejit.ModelLoadError, match="not a readable ONNX model"):
        sparsejit.compile(directory / "model.onnx")
    result = CliRunner().invoke(main, ["benchmark", str(directory), "-t", "0.1", "-q"])
    assert result.exit_code == 1 and "not a readable ONNX model" in result.output
    assert "Traceback" not in result.output
