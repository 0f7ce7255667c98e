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


# --- Abuse (issue 31): cheap sockets must not lock out every client or the health checks ---------------------------

@contextmanager
def connect_from(running: Running, source: str) -> Iterator[socket.socket]:
    """A connection from another loopback address (127.0.0.0/8 is all local): another client."""
    with socket.create_connection(running.address, timeout=10, source_address=(source, 0)) as sock:
        yield sock


def request(sock: socket.socket, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return read_response(sock)


def test_health_answers_past_the_connection_cap_and_readiness_says_saturated(tmp_path: Path) -> None:
    """256 idle sockets made /healthz answer 503 until they timed out: an orchestrator then restarts
    the process and every job is lost. Past the cap, a reserved lane answers health checks only."""
    settings = settings_for(tmp_path, max_connections=2, operations_connections=3, retry_after_s=7)
    with running_server(settings) as running:
        with connect(running), connect(running), connect(running) as health, connect(running) as ready:
            with connect(running) as model, connect(running) as over:
                status, headers, body = read_response(over)  # past the lane too: refused at once
                assert_problem(status, headers, body, 503)
                assert headers["retry-after"] == "7"
                assert request(health, "GET", "/healthz")[0] == 200
                status, headers, body = request(ready, "GET", "/readyz")
                assert status == 503 and headers["retry-after"] == "7"
                assert json.loads(body)["status"] == "saturated" and json.loads(body)["saturated"] == ["connections"]
                problem = assert_problem(*request(model, "POST", "/denoise"), 503)
                assert "/healthz" in str(problem["detail"])
        time.sleep(0.2)  # the server sees the sockets close
        assert httpx.get(f"{running.base}/readyz").json()["status"] == "ready"


def test_head_healthz_and_readyz_answer_200(tmp_path: Path) -> None:
    with running_server(settings_for(tmp_path)) as running:
        for path in ("/healthz", "/readyz"):
            response = httpx.head(f"{running.base}{path}")
            assert response.status_code == 200 and response.content == b""


def test_connections_per_client_address_are_capped(tmp_path: Path) -> None:
    with running_server(settings_for(tmp_path, max_connections_per_client=2, retry_after_s=3)) as running:
        with connect_from(running, "127.0.0.2"), connect_from(running, "127.0.0.2"):
            with connect_from(running, "127.0.0.2") as third:
                status, headers, body = read_response(third)
                assert "this address" in str(assert_problem(status, headers, body, 503)["detail"])
            with connect_from(running, "127.0.0.3") as other:  # another client is not affected
                assert request(other, "GET", "/healthz")[0] == 200


def test_a_complete_head_over_the_documented_cap_is_431(tmp_path: Path) -> None:
    """h11 checks only an incomplete head, so a 70 KB head that arrived complete passed the 64 KiB cap."""
    with running_server(settings_for(tmp_path)) as running, connect(running) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        problem = assert_problem(*read_response(sock), 431)
        assert "65536" in str(problem["detail"])


def trickle(running: Running, source: str, stop: threading.Event) -> tuple[int, dict[str, str], bytes] | None:
    """A client that sends headers for a 100 kB body, then one byte every 0.1 s until the server gives up."""
    with connect_from(running, source) as sock:
        sock.sendall(b"POST /denoise HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        try:
            while not stop.wait(0.1):
                sock.sendall(b"x")
        except OSError:  # the server closed the connection: its answer is in the buffer
            pass
        return read_response(sock)


def test_slow_uploads_hold_no_request_slot_and_are_cut_off_by_the_rate(tmp_path: Path) -> None:
    """64 sockets sending a byte every 20 s held every RESTORE_MAX_REQUESTS slot and everyone got 503:
    the body timeout counted only silence. Now a slot is taken once the body is in, one address
    has RESTORE_MAX_REQUESTS_PER_CLIENT requests open, and a body must average RESTORE_MIN_UPLOAD_RATE."""
    settings = settings_for(
        tmp_path, max_requests=1, max_requests_per_client=2, body_timeout_s=1.0, min_upload_rate=1000, retry_after_s=3,
    )
    png = encode_pil(noisy_image(16, 16, 1), "PNG")
    stop = threading.Event()
    with running_server(settings) as running, ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(trickle, running, "127.0.0.2", stop) for _ in range(2)]
        time.sleep(0.5)  # both are uploading
        with connect_from(running, "127.0.0.2") as third:
            sock_third = third
            third.sendall(b"POST /denoise HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10\r\n\r\n")
            problem = assert_problem(*read_response(sock_third), 503)
            assert "this address" in str(problem["detail"])
        started = time.perf_counter()
        assert httpx.post(f"{running.base}/denoise", content=png, timeout=30).status_code == 200  # the slot is free
        for future in slow:
            result = future.result(timeout=30)
            assert result is not None
            problem = assert_problem(*result, 408)
            assert "too slow" in str(problem["detail"]) and "1000 bytes/s" in str(problem["detail"]), problem
        assert time.perf_counter() - started < 10
        stop.set()
