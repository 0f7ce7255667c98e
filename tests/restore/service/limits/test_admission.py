"""Admission through the HTTP layer: refusals come before decoding, and every hold is given back."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from restore.service.errors import PayloadTooLarge
from restore.service.images import codecs
from restore.service.inference.runtime import Runtime
from restore.service.settings import Settings
from tests.conftest import BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest

SMALL = encode_pil(noisy_image(40, 40, 1), "PNG")


def tiff_16_gray_alpha() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, noisy_image(9, 13, 2, dtype=np.uint16), photometric="minisblack", extrasamples=["unassalpha"])
    return buffer.getvalue()


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noisy_image(9, 13, 3)).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_pil(noisy_image(9, 13, 1), "PNG"), id="gray-png"),
        pytest.param(encode_pil(noisy_image(9, 13, 2), "PNG"), id="gray-alpha-png"),
        pytest.param(encode_pil(noisy_image(9, 13, 4), "PNG"), id="rgba-png"),
        pytest.param(codecs.encode(noisy_image(9, 13, 1, dtype=np.uint16), None, None, "png"), id="gray-png-16"),
        pytest.param(codecs.encode(noisy_image(9, 13, 3, dtype=np.uint16), None, None, "png"), id="rgb-png-16"),
        pytest.param(codecs.encode(noisy_image(9, 13, 3, dtype=np.uint16), None, None, "tiff"), id="rgb-tiff-16"),
        pytest.param(tiff_16_gray_alpha(), id="gray-alpha-tiff-16"),
        pytest.param(cmyk_jpeg(), id="cmyk-jpeg"),
        pytest.param(encode_pil(noisy_image(9, 13, 3), "WEBP"), id="webp"),
        pytest.param(encode_pil(noisy_image(9, 13, 1), "BMP"), id="gray-bmp"),
    ],
)
def test_the_header_probe_agrees_with_decoding(data: bytes) -> None:
    """Admission picks the model (gray or colour) and prices the tiles from the header alone."""
    header, image = codecs.probe(data, 10**6), codecs.decode(data, 10**6)
    assert header.channels == image.channels
    assert {header.width, header.height} == {image.width, image.height} == {9, 13}
    with pytest.raises(PayloadTooLarge):
        codecs.probe(data, 100)


def runtime_of(client: httpx.AsyncClient) -> Runtime:
    runtime: Runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    decode: Callable[..., codecs.DecodedImage] = codecs.decode

    def counting(data: bytes, max_pixels: int) -> codecs.DecodedImage:
        calls.append(len(data))
        return decode(data, max_pixels)

    monkeypatch.setattr(codecs, "decode", counting)
    return calls


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def assert_nothing_held(client: httpx.AsyncClient) -> None:
    assert client._transport.app.state.in_flight.empty  # type: ignore[attr-defined]
    runtime = runtime_of(client)
    assert all(s.scheduler is None or s.scheduler.queued_seconds() == 0 for s in runtime.models.values())


@pytest.mark.anyio
@pytest.mark.parametrize(
    "limits,budget",
    [({"max_queue_seconds": 1e-6}, "queue"), ({"max_pixels_in_flight": 2000, "client_budget_share": 1.0}, "pixels")],
)
async def test_a_request_that_does_not_fit_is_refused_before_decoding_while_health_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: dict[str, float], budget: str
) -> None:
    """A 40x40 request holds its queue place and 1600 decoded pixels while its tiles wait; a second
    one would wait for more than the queue limit, or push the pixels in flight over 2000."""
    gate = threading.Event()
    engine = BoxEngine(radius=1, delay=0.01)
    root = write_fake_manifest(tmp_path, [{"name": "fake"}])
    settings = Settings(models_dir=root, tile_size=32, tile_overlap=2, max_batch=1, **limits)  # type: ignore[arg-type]
    decoded = count_decodes(monkeypatch)
    async with serve(settings, lambda spec: engine) as client:
        runtime = runtime_of(client)
        engine.gate = gate
        first = asyncio.create_task(client.post("/denoise", content=SMALL))
        await until(lambda: runtime.models["fake"].scheduler.depth > 0)  # type: ignore[union-attr]
        refused = await client.post("/denoise", content=SMALL)
        assert refused.status_code == 503, refused.text
        assert refused.json()["title"] == "Overloaded" and int(refused.headers["retry-after"]) >= 1
        assert len(decoded) == 1  # only the first request's image was ever decoded
        metric = "restore_queue_rejections_total" if budget == "queue" else 'restore_budget_rejections_total{budget="pixels"}'
        assert metric in (await client.get("/metrics")).text
        assert (await client.get("/healthz")).status_code == 200
        gate.set()
        assert (await first).status_code == 200
        assert_nothing_held(client)


@pytest.mark.anyio
async def test_every_hold_is_given_back_whatever_the_outcome(tmp_path: Path) -> None:
    root = write_fake_manifest(tmp_path, [{"name": "fake"}])
    async with serve(Settings(models_dir=root, tile_size=32, tile_overlap=2), lambda spec: BoxEngine()) as client:
        runtime = runtime_of(client)
        png = encode_pil(noisy_image(70, 50, 1), "PNG")
        outcomes = [
            await client.post("/denoise", content=png),
            await client.post("/denoise", files={"image": ("x.png", png, "image/png")}),
            await client.post("/denoise", content=png[: len(png) // 2]),  # corrupt: 422 after admission
            await client.post("/denoise?format=jpeg", content=png, headers={"Accept": "image/png"}),
            await client.post("/denoise", content=b"not an image"),
            await client.post("/denoise?sigma=25", content=png),  # no such model: 422 before decoding
        ]
        assert [r.status_code for r in outcomes] == [200, 200, 422, 200, 415, 422]
        assert_nothing_held(client)
