"""Uploads: one buffer, multipart parsed incrementally off the event loop, body bytes budgeted."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable

import pytest
from starlette.requests import Request

from restore.service.errors import BadRequest, Overloaded, PayloadTooLarge
from restore.service.limits import uploads
from restore.service.limits.budget import Budget
from restore.service.metrics import Metrics

pytestmark = pytest.mark.anyio
BOUNDARY = "bNd-42"


def multipart(*parts: tuple[str, bytes], filename: bool = True, close: bool = True) -> bytes:
    body = b""
    for name, data in parts:
        file = f'; filename="{name}.png"' if filename else ""
        body += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def request(
    body: bytes, content_type: str, *, chunk: int = 65536, declare: bool = True
) -> tuple[Request, list[int]]:
    """A Starlette request whose body arrives in ``chunk``-byte messages; records the sizes received."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    received: list[int] = []

    async def receive() -> dict[str, object]:
        if chunks:
            data = chunks.pop(0)
            received.append(len(data))
            return {"type": "http.request", "body": data, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    headers = [(b"content-type", content_type.encode())]
    if declare:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": "/denoise", "headers": headers, "query_string": b""}
    return Request(scope, receive), received  # type: ignore[arg-type]


def bodies(limit: int = 1 << 30) -> Budget:
    return Budget("body_bytes", limit, "body bytes", Metrics(), retry_after_s=1)


FORM = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.mark.parametrize("chunk,size", [(7, 20_000), (4096, 3 << 20), (1 << 20, 3 << 20)])
async def test_only_the_image_part_is_kept_whatever_the_chunking(chunk: int, size: int) -> None:
    image = os.urandom(size) + f"\r\n--{BOUNDARY}".encode()[:-1]  # ends like a boundary, but is not one
    body = multipart(("comment", b"hello"), ("image", image), ("other", b"x" * 1000))
    budget = bodies()
    with budget.hold() as hold:
        data = await uploads.read_upload(request(body, FORM, chunk=chunk)[0], 1 << 30, hold)
        assert hold.amount == len(body)  # the whole body counted while it was read
    assert data == image


async def test_a_form_field_without_a_file_name_is_accepted_too() -> None:
    body = multipart(("image", b"\x89PNG..."), filename=False)
    with bodies().hold() as hold:
        assert await uploads.read_upload(request(body, FORM)[0], 1 << 20, hold) == b"\x89PNG..."


async def test_multipart_is_parsed_in_worker_threads_not_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[bool] = []
    feed: Callable[..., None] = uploads._MultipartImage.feed

    def recording_feed(self: uploads._MultipartImage, chunks: list[bytes]) -> None:
        threads.append(threading.current_thread() is threading.main_thread())
        feed(self, chunks)

    monkeypatch.setattr(uploads._MultipartImage, "feed", recording_feed)
    body = multipart(("image", os.urandom(5 << 20)))
    with bodies().hold() as hold:
        await uploads.read_upload(request(body, FORM)[0], 1 << 30, hold)
    assert len(threads) >= 5 and not any(threads)  # a megabyte at a time, then the rest


@pytest.mark.parametrize(
    "body,content_type,message",
    [
        (multipart(("picture", b"123")), FORM, "field named 'image'"),
        (multipart(("image", b"1"), ("image", b"2")), FORM, "more than one"),
        (multipart(("image", b"123"), close=False), FORM, "closing boundary"),
        (multipart(("image", b"123")), "multipart/form-data", "no boundary"),
        (multipart(*[(f"f{i}", b"x") for i in range(20)]), FORM, "parts"),
        (b"--" + BOUNDARY.encode() + b"\r\nno header end", FORM, "malformed multipart"),
    ],
)
async def test_malformed_multipart_is_422(body: bytes, content_type: str, message: str) -> None:
    with bodies().hold() as hold, pytest.raises(BadRequest, match=message):
        await uploads.read_upload(request(body, content_type)[0], 1 << 20, hold)


@pytest.mark.parametrize("declare", [True, False])
async def test_a_body_over_the_limit_is_413(declare: bool) -> None:
    with bodies().hold() as hold, pytest.raises(PayloadTooLarge):
        await uploads.read_upload(request(b"x" * 5000, "image/png", chunk=1000, declare=declare)[0], 4096, hold)


async def test_a_declared_body_that_does_not_fit_the_budget_is_refused_before_a_byte_is_read() -> None:
    budget = bodies(limit=10_000)
    other = budget.hold(9_000)  # another upload in flight
    req, received = request(b"x" * 2000, "image/png")
    with budget.hold() as hold, pytest.raises(Overloaded):
        await uploads.read_upload(req, 1 << 20, hold)
    assert received == []
    other.release()
    assert budget.used == 0


async def test_an_undeclared_body_is_refused_as_soon_as_it_outgrows_the_budget() -> None:
    budget = bodies(limit=10_000)
    other = budget.hold(7_000)
    req, received = request(b"x" * 20_000, "image/png", chunk=1000, declare=False)
    with budget.hold() as hold, pytest.raises(Overloaded):
        await uploads.read_upload(req, 1 << 20, hold)
    assert sum(received) == 4000  # refused on the chunk that crossed the limit
    other.release()
    assert budget.used == 0


async def test_a_raw_body_comes_back_whole() -> None:
    data = os.urandom(300_000)
    read: Callable[..., Awaitable[bytes]] = uploads.read_upload
    with bodies().hold() as hold:
        assert await read(request(data, "application/octet-stream", chunk=4096, declare=False)[0], 1 << 20, hold) == data
