"""The HTTP edge (src/restore/service/server.py and middleware.RequestLimits) against real sockets: no client can
hold the server, every refusal is problem+json with an X-Request-ID, and SIGTERM ends in bounded time."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from restore.service.settings import Settings
from tests.conftest import BoxEngine, Running, encode_pil, noisy_image, running_server, write_fake_suite

PROBLEM = "application/problem+json"


class HeldEngine(BoxEngine):
    """Blocks every batch until ``gate`` is set, and says when one is waiting: a request in inference."""

    def __init__(self) -> None:
        super().__init__(radius=1)
        self.inferring = threading.Event()
        self.gate = threading.Event()
        self.gate.set()  # open for the warm-up

    def hold(self) -> None:
        self.inferring.clear()
        self.gate.clear()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.inferring.set()
        return super().infer(batch)


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(models_dir=write_fake_suite(tmp_path), tile_size=64, tile_overlap=2, **overrides)  # type: ignore[arg-type]


@contextmanager
def connect(running: Running) -> Iterator[socket.socket]:
    with socket.create_connection(running.address, timeout=10) as sock:
        yield sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Everything until the server closes the connection, parsed as one HTTP/1.1 response."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, object]:
    assert status == expected, body
    assert headers["content-type"] == PROBLEM and len(headers["x-request-id"]) == 32
    problem: dict[str, object] = json.loads(body)
    assert problem["status"] == expected and {"type", "title", "detail"} <= set(problem)
    return problem


def test_idle_connection_and_trickled_headers_get_408(tmp_path: Path) -> None:
    with running_server(settings_for(tmp_path, header_timeout_s=0.3)) as running:
        with connect(running) as idle, connect(running) as trickle:
            trickle.sendall(b"POST /denoise HTTP/1.1\r\nHost: x\r\n")
            started = time.perf_counter()
            assert_problem(*read_response(idle), 408)
            assert_problem(*read_response(trickle), 408)
            assert time.perf_counter() - started < 3


def test_stalled_body_gets_408_and_the_connection_closes(tmp_path: Path) -> None:
    """Content-Length promises more than is sent: the server stops waiting after body_timeout_s."""
    with running_server(settings_for(tmp_path, body_timeout_s=0.3)) as running, connect(running) as sock:
        sock.sendall(b"POST /denoise HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        problem = assert_problem(*read_response(sock), 408)
        assert "stalled" in str(problem["detail"])
        metrics = httpx.get(f"{running.base}/metrics").text
        assert 'restore_requests_total{endpoint="/denoise",status="408"} 1.0' in metrics


def test_huge_headers_get_431_at_once_and_health_still_answers(tmp_path: Path) -> None:
    with running_server(settings_for(tmp_path, max_header_bytes=8192)) as running, connect(running) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MB; the server answers and closes long before
                sock.sendall(b"a" * 65536)
        except OSError:  # the server closed the connection: what we want
            pass
        problem = assert_problem(*read_response(sock), 431)
        assert "8192" in str(problem["detail"])
        started = time.perf_counter()
        assert httpx.get(f"{running.base}/healthz").status_code == 200
        assert time.perf_counter() - started < 1


def test_malformed_http_gets_a_400_problem(tmp_path: Path) -> None:
    with running_server(settings_for(tmp_path)) as running, connect(running) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert_problem(*read_response(sock), 400)


def test_connections_over_the_cap_get_503_with_retry_after(tmp_path: Path) -> None:
    with running_server(settings_for(tmp_path, max_connections=2, retry_after_s=7)) as running:
        with connect(running), connect(running), connect(running) as third:
            status, headers, body = read_response(third)
            assert_problem(status, headers, body, 503)
            assert headers["retry-after"] == "7"


def test_requests_over_the_cap_get_503_and_operations_still_answer(tmp_path: Path) -> None:
    engine = HeldEngine()
    settings = settings_for(tmp_path, max_requests=1, retry_after_s=3)
    png = encode_pil(noisy_image(16, 16, 1), "PNG")
    with running_server(settings, lambda spec: engine) as running, ThreadPoolExecutor(1) as pool:
        engine.hold()
        first = pool.submit(httpx.post, f"{running.base}/denoise", content=png, timeout=30)
        assert engine.inferring.wait(10)  # the first request holds the only slot
        refused = httpx.post(f"{running.base}/denoise", content=png)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert refused.headers["content-type"] == PROBLEM and "x-request-id" in refused.headers
        assert httpx.get(f"{running.base}/healthz").status_code == 200
        engine.gate.set()
        assert first.result().status_code == 200


@pytest.mark.parametrize("stalled", ["headers", "body"])
def test_sigterm_lets_inference_finish_and_does_not_wait_for_a_stalled_client(tmp_path: Path, stalled: str) -> None:
    engine = HeldEngine()
    settings = settings_for(tmp_path, shutdown_timeout_s=1.5, header_timeout_s=60, body_timeout_s=60)
    png = encode_pil(noisy_image(16, 16, 1), "PNG")
    with running_server(settings, lambda spec: engine) as running, ThreadPoolExecutor(1) as pool, connect(running) as sock:
        engine.hold()
        in_flight = pool.submit(httpx.post, f"{running.base}/denoise", content=png, timeout=30)
        assert engine.inferring.wait(10)
        sock.sendall(b"POST /denoise HTTP/1.1\r\nHost: x\r\n")  # headers begun, never finished...
        if stalled == "body":  # ...or finished, with a body that never comes
            sock.sendall(b"Content-Type: image/png\r\nContent-Length: 1000\r\n\r\nxx")
        time.sleep(0.3)  # the server has read them
        started = time.perf_counter()
        running.server.handle_exit(signal.SIGTERM, None)
        time.sleep(0.3)
        engine.gate.set()  # the inference in flight finishes during the grace period...
        assert in_flight.result().status_code == 200
        running.thread.join(timeout=20)
        assert not running.thread.is_alive()  # ...and the stalled client does not hold the exit
        assert time.perf_counter() - started < 5
        if stalled == "body":  # its request was cancelled: a 503 problem, not a plain-text 500
            assert_problem(*read_response(sock), 503)
