"""``sparsejit serve`` as users run it: a subprocess on a loopback port, the default embedding model,
graceful shutdown on SIGTERM with requests in flight; and the command's usage errors."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from click.testing import CliRunner

from sparsejit.serve.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `sparsejit serve` itself, with one test hook: while the file $HOLD exists, an engine call waits (after
# touching $ENTERED), so the test can have requests provably in flight when it sends SIGTERM.
HELD_SERVE = """
import os, sys, time
from pathlib import Path
from sparsejit.serve import batching
from sparsejit.serve.cli import main

hold, entered = Path(os.environ["HOLD"]), Path(os.environ["ENTERED"])
run_group = batching.PipelineRunner.run_group

def held_run_group(self, jobs):
    if hold.exists():
        entered.touch()
        while hold.exists():
            time.sleep(0.01)
    return run_group(self, jobs)

batching.PipelineRunner.run_group = held_run_group
sys.argv[0] = "sparsejit"
main()
"""


def metric(url: str, name: str, endpoint: str) -> float | None:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(rf'^{name}{{endpoint="{re.escape(endpoint)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_serve_default_model_and_graceful_shutdown(tmp_path) -> None:
    port = free_port()
    log = open(tmp_path / "server.log", "w+")
    hold, entered = tmp_path / "hold", tmp_path / "entered"
    env = {**os.environ, "SPARSEJIT_API_KEY": "", "HOLD": str(hold), "ENTERED": str(entered)}
    proc = subprocess.Popen([sys.executable, "-c", HELD_SERVE, "serve", "--port", str(port),
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
        want = httpx.post(f"{url}/predict", json={"inputs": texts}, timeout=120)
        assert want.status_code == 200
        hold.touch()  # engine calls wait from now on
        name = models[0]["name"]
        with cf.ThreadPoolExecutor(6) as pool:
            try:
                futures = [pool.submit(httpx.post, f"{url}/predict", json={"inputs": texts}, timeout=120)
                           for _ in range(6)]
                # each request (24 texts) fills batches of 2 on its own: one held in the engine, five queued
                deadline = time.monotonic() + 60
                while not entered.exists() or metric(url, "sparsejit_queue_depth", name) != 5:
                    assert time.monotonic() < deadline, "the six requests never reached the server"
                    time.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                while True:  # shutting down: no new connections, while all six are still unanswered
                    try:
                        httpx.get(f"{url}/health", timeout=5)
                    except httpx.TransportError:
                        break
                    assert time.monotonic() < deadline, "the server never began shutting down"
                    time.sleep(0.02)
                assert not any(f.done() for f in futures), "a request finished while the engine was held"
                assert proc.poll() is None, "the server exited with requests in flight"
            finally:
                hold.unlink(missing_ok=True)  # let the engine run what is in flight
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 6
        for r in responses:
            np.testing.assert_allclose(np.asarray(r.json()), np.asarray(want.json()), rtol=1e-5, atol=1e-6)
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


def test_invalid_options_are_one_clean_line_each() -> None:
    result = CliRunner().invoke(main, ["serve", "-s", "0", "--port", "0"])
    assert result.exit_code == 1
    assert "invalid sequence_length: sequence_length must be an int >= 2" in result.output
    assert "pydantic" not in result.output and "type=value_error" not in result.output
