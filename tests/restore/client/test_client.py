"""restore.client against a live server (the real HTTP edge, fake models): the synchronous calls,
jobs with progress, typed errors, the 503 retry rule, streamed uploads, and the import footprint."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from restore.client import AsyncClient, Client, Job, errors
from restore.service.settings import Settings
from tests.conftest import Running, encode_pil, noisy_image, running_server, write_fake_suite

PNG = encode_pil(noisy_image(100, 130, 3), "PNG")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("client")
    settings = Settings(models_dir=write_fake_suite(root / "models"), tile_size=64, tile_overlap=2, api_keys=("k1", "k2"),
                        max_body_bytes=1024 * 1024)
    with running_server(settings) as running:
        yield running


def direct(server: Running, path: str, body: bytes) -> bytes:
    response = httpx.post(f"{server.base}{path}", content=body, headers={"Authorization": "Bearer k1"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def test_the_client_imports_without_numpy_torch_or_onnxruntime() -> None:
    code = (
        "import sys, restore.client, restore.client.cli; "
        "heavy = {'numpy', 'torch', 'onnxruntime', 'PIL', 'service'} & {m.split('.')[0] for m in sys.modules}; "
        "assert not heavy, heavy"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_sync_calls_return_what_the_service_returns(server: Running, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(PNG)
    with Client(server.base, api_key="k1") as client:
        assert client.denoise(PNG) == direct(server, "/denoise", PNG)
        assert client.denoise(path, format="webp") == direct(server, "/denoise?format=webp", PNG)  # streamed from the path
        assert client.denoise(PNG, model="colour") == direct(server, "/denoise?model=colour", PNG)
        with open(path, "rb") as handle:
            assert client.edges(handle, thin=True, threshold=0.3) == direct(server, "/edges?thin=true&threshold=0.3", PNG)
        assert client.derain(PNG) == client.dehaze(PNG) == client.desnow(PNG) == direct(server, "/derain", PNG)


def test_a_job_reports_progress_and_returns_the_synchronous_bytes(server: Running, tmp_path: Path) -> None:
    seen: list[Job] = []
    with Client(server.base, api_key="k1", poll_interval=0.01) as client:
        data = client.process("denoise", PNG, progress=seen.append, format="png")
        assert data == direct(server, "/denoise?format=png", PNG)
        assert seen and seen[-1].status == "succeeded" and seen[-1].done == seen[-1].total == 6
        assert [job.done for job in seen] == sorted(job.done for job in seen)
        with pytest.raises(errors.NotFound):  # process() deletes the job once its result is fetched
            client.job(seen[-1].id)
        job = client.submit("edges", PNG, thin=True)
        client.wait(job)
        client.result(job, tmp_path / "edges.png")  # streamed to a file
        assert (tmp_path / "edges.png").read_bytes() == direct(server, "/edges?thin=true", PNG)


@pytest.mark.parametrize(
    "call,error,status",
    [
        (lambda c: c.denoise(b"not an image"), errors.UnsupportedMediaType, 415),
        (lambda c: c.denoise(PNG, sigma=17), errors.InvalidRequest, 422),
        (lambda c: c.denoise(PNG + bytes(1024 * 1024)), errors.PayloadTooLarge, 413),
        (lambda c: c.job("no-such-job"), errors.NotFound, 404),
        (lambda c: c.result(c.submit("denoise", PNG[: len(PNG) // 2])), errors.InvalidRequest, 422),
    ],
    ids=["415", "422", "413", "404", "422-before-202"],
)
def test_each_problem_status_raises_its_own_class(server: Running, call: object, error: type, status: int) -> None:
    with Client(server.base, api_key="k1") as client, pytest.raises(error) as raised:
        call(client)  # type: ignore[operator]
    assert raised.value.status_code == status and raised.value.detail


def test_wrong_key_is_unauthorized_and_jobs_are_per_key(server: Running) -> None:
    with Client(server.base, api_key="nope") as client, pytest.raises(errors.Unauthorized):
        client.denoise(PNG)
    with Client(server.base, api_key="k1") as owner, Client(server.base, api_key="k2") as other:
        job = owner.submit("derain", PNG)
        with pytest.raises(errors.NotFound):
            other.job(job)
        owner.wait(job)


def test_connection_refused_is_connection_failed() -> None:
    with Client("http://127.0.0.1:9", retries=0) as client, pytest.raises(errors.ConnectionFailed):
        client.denoise(PNG)


def _flaky(answers: list[httpx.Response]) -> tuple[httpx.MockTransport, list[bytes]]:
    bodies: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return answers.pop(0)

    return httpx.MockTransport(handle), bodies


def _busy(retry_after: str | None) -> httpx.Response:
    problem = {"type": "/problems/overloaded", "title": "Overloaded", "status": 503, "detail": "queue full"}
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(503, json=problem, headers={**headers, "Content-Type": "application/problem+json"})


def test_503_with_retry_after_is_retried_with_the_body_sent_again(tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(PNG)
    transport, bodies = _flaky([_busy("3"), _busy("120"), httpx.Response(200, content=b"restored")])
    waits: list[float] = []
    client = Client("http://test", transport=transport, max_retry_wait=30)
    client._sleep = waits.append
    assert client.denoise(path) == b"restored"
    assert waits == [3.0, 30.0]  # as asked, capped at max_retry_wait
    assert bodies == [PNG, PNG, PNG]  # the file was streamed again on each attempt


def test_retries_are_bounded_and_a_503_without_retry_after_is_not_retried() -> None:
    transport, bodies = _flaky([_busy("1") for _ in range(4)])
    client = Client("http://test", transport=transport, retries=2)
    client._sleep = lambda seconds: None
    with pytest.raises(errors.ServiceUnavailable) as raised:
        client.denoise(PNG)
    assert len(bodies) == 3 and raised.value.retry_after == 1.0
    transport, bodies = _flaky([_busy(None)])
    client = Client("http://test", transport=transport)
    with pytest.raises(errors.ServiceUnavailable):
        client.denoise(PNG)
    assert len(bodies) == 1


def test_async_client_does_what_the_sync_one_does(server: Running, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(PNG)

    async def scenario() -> None:
        async with AsyncClient(server.base, api_key="k1", poll_interval=0.01) as client:
            assert await client.denoise(path) == direct(server, "/denoise", PNG)  # streamed in chunks
            seen: list[Job] = []
            assert await client.process("edges", PNG, progress=seen.append, depth=16) == direct(server, "/edges?depth=16", PNG)
            assert seen[-1].status == "succeeded"
            with pytest.raises(errors.InvalidRequest):
                await client.submit("denoise", PNG, sigma=17)

    asyncio.run(scenario())


def test_async_client_retries_503_with_retry_after() -> None:
    answers = [_busy("2"), httpx.Response(200, content=b"ok")]

    async def handle(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return answers.pop(0)

    async def scenario() -> list[float]:
        waits: list[float] = []

        async def record(seconds: float) -> None:
            waits.append(seconds)

        async with AsyncClient("http://test", transport=httpx.MockTransport(handle)) as client:
            client._sleep = record
            assert await client.derain(PNG) == b"ok"
        return waits

    assert asyncio.run(scenario()) == [2.0]


def test_unknown_operation_is_refused_before_any_request() -> None:
    with Client("http://127.0.0.1:9") as client, pytest.raises(ValueError, match="sharpen"):
        client.run("sharpen", PNG)
