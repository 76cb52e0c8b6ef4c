"""``sparsejit serve`` as users run it: a subprocess on a loopback port, the default embedding model,
graceful shutdown on SIGTERM with requests in flight; and the command's usage errors."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from click.testing import CliRunner

from sparsejit.serve.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_default_model_and_graceful_shutdown(tmp_path) -> None:
    port = free_port()
    log = open(tmp_path / "server.log", "w+")
    env = {**os.environ, "SPARSEJIT_API_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "sparsejit.serve.cli", "serve", "--port", str(port),
                             "--sequence-length", "64", "--batch-size", "2", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, open(tmp_path / "server.log").read()
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)
        models = httpx.get(f"{url}/v2/models").json()["models"]
        assert [m["task"] for m in models] == ["transformers_embedding_extraction"]
        r = httpx.post(f"{url}/predict", json={"inputs": "hello world"})
        assert r.status_code == 200 and len(r.json()) == 384

        # SIGTERM while requests are in flight: each still gets its answer, then the process exits.
        texts = [f"sentence number {i} about shutting a server down politely" for i in range(24)]
        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(httpx.post, f"{url}/predict", json={"inputs": texts}, timeout=120)
                       for _ in range(6)]
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            codes = [f.result().status_code for f in futures]
        assert codes == [200] * 6
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status is SIGTERM's
        assert proc.wait(120) in (0, -signal.SIGTERM)
        log.seek(0)
        assert "Traceback" not in log.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_usage_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--task", "no-such-task"])
    assert result.exit_code != 0 and "unknown task" in result.output
    result = runner.invoke(main, ["serve", "--model-path", "."])
    assert result.exit_code != 0 and "--task" in result.output
    result = runner.invoke(main, ["serve", "--task", "sentiment", "--sequence-length", "abc"])
    assert result.exit_code != 0
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "--config-file" in result.output and "--api-key" in result.output


def test_config_file_errors(tmp_path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints:\n  - {name: a, task: sentiment}\n  - {name: a, task: qa}\n")
    result = runner.invoke(main, ["serve", "--config-file", str(bad)])
    assert result.exit_code != 0 and "unique" in result.output
    bad.write_text("endpoints:\n  - {name: 'a b', task: sentiment, colour: red}\n")
    result = runner.invoke(main, ["serve", "--config-file", str(bad)])
    assert result.exit_code != 0 and "colour" in result.output
    result = runner.invoke(main, ["serve", "--config-file", str(bad), "--task", "qa"])
    assert result.exit_code != 0 and "not both" in result.output
    bad.write_text("endpoints:\n  - {name: a, task: sentiment, precision: fp16}\n")
    result = runner.invoke(main, ["serve", "--config-file", str(bad)])
    assert result.exit_code != 0 and "precision" in result.output
    result = runner.invoke(main, ["serve", "--task", "sentiment", "--precision", "int4"])
    assert result.exit_code == 2 and "int4" in result.output
