"""/edges?scales= through the service: the served multi-scale map against the same computation done
whole-image on the fake suite (a box filter of known receptive field), the 422s, jobs and the docs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from restore.core.multiscale import STANDARD, merge
from restore.service.app import create_app
from restore.service.images import codecs
from restore.service.settings import Settings
from tests.conftest import box_filter, encode_pil, fake_engine, noisy_image, serve, write_fake_suite

PROBLEM = "application/problem+json"


# ------------------------------------------------------------------------------ through the API
@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        models_dir=write_fake_suite(tmp_path / "models"), tile_size=64, tile_overlap=2, jobs_dir=tmp_path / "jobs",
        max_pixels=130 * 100 * 3,
    )
    async with serve(settings, fake_engine) as c:
        yield c


def _png(image: np.ndarray) -> bytes:
    return encode_pil(image, "PNG")


async def _edges(client: httpx.AsyncClient, query: str, image: np.ndarray) -> httpx.Response:
    return await client.post(f"/edges{query}", content=_png(image), headers={"Content-Type": "image/png"})


def _box_maps(pixels: np.ndarray) -> np.ndarray:
    """What the fake edges model computes on a whole image: its box filter on the first channel, six times."""
    chw = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    out = box_filter(chw.transpose(2, 0, 1)[None].astype(np.float32) / 255, 1)[0, :1]
    return np.repeat(out, 6, axis=0).transpose(1, 2, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("channels", [3, 1])
async def test_multiscale_map_has_the_input_size_and_equals_the_whole_image_computation(
    client: httpx.AsyncClient, channels: int
) -> None:
    """100x130 in 64 px tiles is several tiles at every scale (150x195 at 1.5); each scale tiled must
    equal that scale run whole, so the served average equals the whole-image multi-scale map."""
    image = noisy_image(100, 130, channels, seed=2)
    response = await _edges(client, "?scales=1.5,0.5,1&depth=16", image)
    assert response.status_code == 200, response.text
    served = codecs.decode(response.content, 10**6).color
    assert served.shape == (100, 130, 1) and served.dtype == np.uint16
    reference = merge(_box_maps, image, STANDARD)[:, :, 0]
    assert np.abs(served[:, :, 0] / 65535 - reference).max() < 2e-5
    single = codecs.decode((await _edges(client, "?depth=16", image)).content, 10**6).color[:, :, 0] / 65535
    assert np.abs(single - reference).mean() > 1e-3  # the option changes the map: the resizes blur it


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query,needle",
    [
        ("?scales=", "empty"), ("?scales=-1", "outside"), ("?scales=0.5,-1", "outside"), ("?scales=0", "outside"),
        ("?scales=0.5,0.75,1,1.25,1.5", "at most 4"), ("?scales=1,1", "twice"), ("?scales=a", "not a number"),
        ("?scales=2.5", "outside"),
        ("?scales=1,2", "over the limit"),  # 100x130 at 2 is 4x the pixels; the limit here is 3x
    ],
)
async def test_bad_scales_are_422_problems(client: httpx.AsyncClient, query: str, needle: str) -> None:
    for route in ("/edges", "/v1/jobs/edges"):
        response = await client.post(f"{route}{query}", content=_png(noisy_image(100, 130)), headers={"Content-Type": "image/png"})
        assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, (route, response.text)
        assert needle in response.json()["detail"]


@pytest.mark.anyio
async def test_only_edges_takes_scales(client: httpx.AsyncClient) -> None:
    response = await client.post("/denoise?scales=1", content=_png(noisy_image(40, 40, 1)), headers={"Content-Type": "image/png"})
    assert response.status_code == 422 and "unknown query parameter 'scales'" in response.json()["detail"]


@pytest.mark.anyio
async def test_a_multiscale_job_counts_the_tiles_of_every_scale_and_returns_the_synchronous_bytes(
    client: httpx.AsyncClient,
) -> None:
    image = noisy_image(100, 130, 3, seed=4)
    query = "?scales=0.5,1,1.5&depth=16"
    submitted = await client.post(f"/v1/jobs/edges{query}", content=_png(image), headers={"Content-Type": "image/png"})
    assert submitted.status_code == 202, submitted.text
    url = submitted.headers["location"]
    job: dict[str, Any] = {}
    for _ in range(1500):
        job = (await client.get(url)).json()
        if job["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.02)
    assert job["status"] == "succeeded", job
    # 64 px tiles, overlap 2 x 2 + 2: 50x65 is 1x2 tiles, 100x130 is 2x3, 150x195 is 3x4.
    assert job["progress"]["total"] == 2 + 6 + 12 == job["progress"]["done"]
    result = (await client.get(f"{url}/result")).content
    assert result == (await _edges(client, query, image)).content


def test_openapi_documents_scales_with_its_cost() -> None:
    operation = create_app(Settings()).openapi()["paths"]["/edges"]["post"]
    scales = next(p for p in operation["parameters"] if p["name"] == "scales")
    assert "3.5x" in scales["description"] and scales["schema"]["anyOf"][0]["type"] == "string"
