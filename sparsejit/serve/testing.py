"""Run the server in a background thread on a free loopback port (for tests and the load test).

``with ServerThread(app) as server: httpx.get(server.url + "/health")`` — a real uvicorn server, real
sockets; the app's state stays reachable in-process (``server.app.state.sparsejit``).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["ServerThread", "free_loopback_socket"]


def free_loopback_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a port the OS picked (no race between picking and binding)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ServerThread:
    """uvicorn serving ``app`` from a daemon thread; a context manager that waits for startup."""

    def __init__(self, app: Any, *, log_level: str = "warning", startup_timeout_s: float = 60.0,
                 graceful_timeout_s: int | None = 30) -> None:
        self.app = app
        self.sock = free_loopback_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                                    timeout_graceful_shutdown=graceful_timeout_s))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"uvicorn-{self.port}", daemon=True)
        self.startup_timeout_s = startup_timeout_s

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start within {self.startup_timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Graceful shutdown: stop accepting, finish in-flight requests, run the app's shutdown."""
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until ``/v2/health/ready`` answers 200 (every endpoint compiled); TimeoutError past it."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {self.url} not ready after {timeout_s:g} s")
            time.sleep(0.05)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
