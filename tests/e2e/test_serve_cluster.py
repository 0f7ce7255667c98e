"""The app on a local Ray Serve cluster (issue 17): two replicas, answers equal to ``make run``'s,
a killed replica replaced, overload answered with 503 + Retry-After, and every process stopped.

One head node on loopback with 2 CPUs, no dashboard and no usage reporting, started by this module
and shut down at its end; the deployment is ``restore.service.ray_serve.build``, what ``serve run
deploy/serve.yaml`` deploys. The baseline is the same settings served by ``restore.service.server`` (what
``make run`` starts). ``REQUIRE_RAY=1`` (CI) turns a missing Ray into a failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from restore.service.settings import Settings
from tests.conftest import Running, encode_pil, noisy_image, running_server

if not os.environ.get("REQUIRE_RAY"):
    pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from restore.service import ray_serve  # noqa: E402

# Ray's driver keeps its daemons' Popen objects, sockets and threads in this process: what they warn
# about at exit is Ray's, not the service's (which runs in the replicas, not here).
pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow, pytest.mark.filterwarnings(
    "ignore::ResourceWarning",
    "ignore::pytest.PytestUnraisableExceptionWarning",
    "ignore::pytest.PytestUnhandledThreadExceptionWarning",
    "ignore::UserWarning:ray\\.",
    "ignore::FutureWarning:ray\\.",
)]

#: Both servers: one small real model, one ORT thread, tiles independent of measured speed, and
#: limits small enough that a burst of 16 requests overloads a replica.
SETTINGS: dict[str, Any] = {
    "models": "dncnn-color-blind", "intra_op_threads": 1, "batch_seconds": 0, "max_requests": 2,
    "max_queue_seconds": 1.0, "retry_after_s": 1, "log_level": "warning",
    "serve_min_replicas": 2, "serve_max_replicas": 2, "serve_num_cpus": 1, "serve_max_queued_requests": 2,
    "serve_ready_timeout_s": 240,
}
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # nothing leaves the machine
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray process binds and dials loopback only
}
PNG = {"Content-Type": "image/png"}
IMAGES = [encode_pil(noisy_image(48, 64, 3, seed=s), "PNG") for s in range(3)] + [encode_pil(noisy_image(40, 40, 1, seed=9), "PNG")]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: Ray starts its daemons and workers as children)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def baseline() -> Iterator[Running]:
    """``make run``: the same settings behind restore.service.server, real ONNX Runtime engine."""
    with running_server(Settings(**SETTINGS), engine_factory=None) as running:  # type: ignore[arg-type]
        yield running


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray head on loopback with the app deployed as 2 replicas; yields the proxy's URL. At the end,
    Serve and Ray are shut down and every process started here must have exited by itself; any that
    did not is killed (so nothing outlives the test) and fails it."""
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    before = descendants(os.getpid())  # the baseline server's threads are not processes; anything else is not ours
    started: set[int] = set()
    try:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp, log_to_driver=False)
        started |= descendants(os.getpid())
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_serve.build(SETTINGS), name="restore", route_prefix="/")  # returns once both replicas are ready
        started |= descendants(os.getpid())
        yield f"http://127.0.0.1:{port}"
    finally:
        started = (started | descendants(os.getpid())) - before
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            deadline = time.monotonic() + 30
            while any(alive(pid) for pid in started) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = sorted(pid for pid in started if alive(pid))
            for pid in left:
                os.kill(pid, signal.SIGKILL)
    assert started and not left, f"processes started by the Ray test outlived ray.shutdown(): {left}"


def post(url: str, body: bytes, path: str = "/denoise", retries: int = 20, failures: list[int] | None = None) -> httpx.Response:
    """A client that retries 503 after its Retry-After (capped at 1 s), as the README tells clients to.
    With ``failures``, other 5xx (a request the proxy had sent to a replica that died) are retried too
    and their statuses appended, for the caller to bound."""
    for _ in range(retries):
        response = httpx.post(f"{url}{path}", content=body, headers=PNG, timeout=120)
        if response.status_code >= 500 and response.status_code != 503 and failures is not None:
            failures.append(response.status_code)
        elif response.status_code != 503:
            return response
        time.sleep(min(1.0, float(response.headers.get("Retry-After", "1"))))
    return response


def unmeasured(body: Any) -> Any:
    """A JSON answer without what each process measures for itself (/v1/models: each model's speed)."""
    if isinstance(body, dict) and isinstance(body.get("models"), list):
        return {**body, "models": [{k: v for k, v in m.items() if k != "speed_mp_per_s"} if isinstance(m, dict) else m for m in body["models"]]}
    return body


def answered_by(responses: list[httpx.Response]) -> set[str]:
    """The replicas that answered 200. A burst past the proxy's queue (RESTORE_SERVE_MAX_QUEUED_REQUESTS,
    which also counts requests still being assigned to a replica) is shed by Serve with 503 and
    Retry-After, which clients retry; anything else fails."""
    for response in responses:
        assert response.status_code == 200 or (response.status_code == 503 and "Retry-After" in response.headers), response.text
    return {r.headers[ray_serve.REPLICA_HEADER] for r in responses if r.status_code == 200}


def same_answer(serve_response: httpx.Response, local: httpx.Response) -> None:
    assert serve_response.status_code == local.status_code, serve_response.text
    assert serve_response.content == local.content
    for header in ("content-type", "x-model", "x-model-version"):
        assert serve_response.headers.get(header) == local.headers.get(header), header


def test_every_answer_equals_make_run_and_both_replicas_serve(cluster: str, baseline: Running) -> None:
    replicas = set()
    for body in IMAGES:
        response, local = post(cluster, body), post(baseline.base, body)
        same_answer(response, local)
        assert response.status_code == 200
        replicas.add(response.headers[ray_serve.REPLICA_HEADER])
    for path in ("/readyz", "/v1/models", "/nowhere"):
        response, local = httpx.get(f"{cluster}{path}"), httpx.get(f"{baseline.base}{path}")
        assert response.status_code == local.status_code and unmeasured(response.json()) == unmeasured(local.json()), path
    bad = httpx.post(f"{cluster}/denoise?sigma=7", content=IMAGES[0], headers=PNG)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json() == httpx.post(f"{baseline.base}/denoise?sigma=7", content=IMAGES[0], headers=PNG).json()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.get(f"{cluster}/healthz") for _ in range(16)))

    for _ in range(5):  # the router picks the less busy of two replicas: concurrent requests reach both
        replicas |= answered_by(asyncio.run(burst()))
        if len(replicas) == 2:
            break
    assert len(replicas) == 2, replicas


def test_large_body_passes_the_proxy(cluster: str, baseline: Running) -> None:
    """60 MiB of multipart body around a small image: the proxy forwards all of it and the answer is
    the small image's, as under make run."""
    padding = np.random.default_rng(0).integers(0, 256, 60 * 2**20, dtype=np.uint8).tobytes()
    files = {"padding": ("padding.bin", padding, "application/octet-stream"), "image": ("a.png", IMAGES[0], "image/png")}
    response = httpx.post(f"{cluster}/denoise", files=files, timeout=300)
    same_answer(response, post(baseline.base, IMAGES[0]))
    assert response.status_code == 200


def test_overload_answers_only_200_or_503_with_retry_after(cluster: str) -> None:
    body = encode_pil(noisy_image(256, 256, 3, seed=4), "PNG")

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{cluster}/denoise", content=body, headers=PNG) for _ in range(16)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    assert all(int(r.headers["Retry-After"]) >= 1 for r in responses if r.status_code == 503)


def test_a_killed_replica_is_replaced_and_requests_keep_being_answered(cluster: str, baseline: Running) -> None:
    before = {httpx.get(f"{cluster}/healthz").headers[ray_serve.REPLICA_HEADER] for _ in range(8)}
    victim = sorted(before)[0]
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#{victim}")]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)  # SIGKILL of the replica's process
    expected = post(baseline.base, IMAGES[1])
    deadline = time.monotonic() + 180
    seen: set[str] = set()

    async def probes() -> set[str]:
        async with httpx.AsyncClient(timeout=60) as client:
            answers = await asyncio.gather(*(client.get(f"{cluster}/healthz") for _ in range(4)))
        return answered_by(answers)

    failures: list[int] = []
    while time.monotonic() < deadline:
        response = post(cluster, IMAGES[1], failures=failures)
        same_answer(response, expected)  # every request is answered, on whichever replica lives
        seen |= {response.headers[ray_serve.REPLICA_HEADER]} | asyncio.run(probes())
        if seen - before:
            break
        time.sleep(0.5)
    new = seen - before
    assert new and victim not in seen, (before, seen)
    assert len(failures) <= 2, f"more than the requests routed before the router saw the death failed: {failures}"
    ready = httpx.get(f"{cluster}/readyz")
    assert ready.status_code == 200
    for _ in range(60):  # the controller's view follows the replicas' within its loop period
        states = serve.status().applications["restore"].deployments[ray_serve.DEPLOYMENT].replica_states
        if states.get("RUNNING") == 2:
            break
        time.sleep(0.5)
    assert states.get("RUNNING") == 2, states
