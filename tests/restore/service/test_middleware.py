"""Request context and limits: whatever escapes is a problem+json 500 with an X-Request-ID, and a client
that leaves mid-upload is counted as 499 without a traceback."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from restore.service.api import operation
from restore.service.app import create_app
from restore.service.images import codecs
from restore.service.settings import Settings
from tests.conftest import asgi_scope, encode_pil, fake_engine, noisy_image, serve, write_fake_suite

pytestmark = pytest.mark.anyio
PROBLEM = "application/problem+json"


async def test_an_unexpected_error_is_a_problem_500_with_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_encoder(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("a bug at /srv/secret/path")

    monkeypatch.setattr(codecs, "encode", broken_encoder)
    async with serve(Settings(models_dir=write_fake_suite(tmp_path)), fake_engine) as client:
        response = await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"), headers={"X-Request-ID": "r-1"})
        assert response.status_code == 500 and response.headers["content-type"] == PROBLEM
        assert response.headers["x-request-id"] == "r-1"
        assert "/srv/secret" not in response.text and response.json()["status"] == 500
        assert 'restore_requests_total{endpoint="/denoise",status="500"} 1.0' in (await client.get("/metrics")).text
    assert any(record.exc_info for record in caplog.records)  # the traceback is in the log


async def test_client_that_leaves_during_the_upload_is_a_quiet_499(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(models_dir=write_fake_suite(tmp_path)), engine_factory=fake_engine)
    png = encode_pil(noisy_image(32, 32, 1), "PNG")
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": png[:20], "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = asgi_scope("/denoise", [(b"content-type", b"image/png"), (b"content-length", str(len(png)).encode())])
    async with app.router.lifespan_context(app):
        for _ in range(200):
            if app.state.runtime.ready:
                break
            await asyncio.sleep(0.02)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            await app(scope, receive, send)
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    metrics = app.state.runtime.metrics.requests
    assert metrics.labels("/denoise", "499")._value.get() == 1
    assert metrics.labels("/denoise", "500")._value.get() == 0


async def test_starlettes_own_errors_are_problems_with_request_id(tmp_path: Path) -> None:
    async with serve(Settings(models_dir=write_fake_suite(tmp_path)), fake_engine) as client:
        for response in (await client.get("/nowhere"), await client.put("/denoise")):
            assert response.status_code in (404, 405) and response.headers["content-type"] == PROBLEM
            assert len(response.headers["x-request-id"]) == 32


@pytest.mark.anyio
async def test_a_memory_error_anywhere_is_a_503_problem_never_a_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 31: a MemoryError outside the decoders (tiling, blending, encoding) must not be a 500."""

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(operation, "plan_for", no_memory)
    async with serve(Settings(models_dir=write_fake_suite(tmp_path), tile_size=64, tile_overlap=2), fake_engine) as client:
        png = encode_pil(noisy_image(16, 16, 1), "PNG")
        response = await client.post("/v1/jobs/denoise", content=png)
        assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "/problems/out-of-memory" and "retry-after" in response.headers
