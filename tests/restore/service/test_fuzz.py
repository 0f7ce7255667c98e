"""Byte flips and truncations of every format we read, through the whole app: never a 5xx, and every
refusal is problem+json. A fixed seed and a bounded number of cases keep it deterministic and fast."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import tifffile

from restore.service.images import codecs
from restore.service.settings import Settings
from tests.conftest import encode_pil, fake_engine, noisy_image, serve, write_fake_suite

pytestmark = pytest.mark.anyio
CASES_PER_FORMAT = 16
ENDPOINTS = ("/denoise", "/edges", "/derain")


def _tiff16(compression: str) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, noisy_image(20, 24, 3, dtype=np.uint16), photometric="rgb", compression=compression)
    return buffer.getvalue()


SEEDS: dict[str, bytes] = {
    "png": encode_pil(noisy_image(20, 24, 3), "PNG"),
    "png16": codecs.encode(noisy_image(20, 24, 3, dtype=np.uint16), None, None, "png"),
    "jpeg": encode_pil(noisy_image(20, 24, 3), "JPEG", quality=90),
    "webp": encode_pil(noisy_image(20, 24, 3), "WEBP"),
    "bmp": encode_pil(noisy_image(20, 24, 3), "BMP"),
    "tiff": encode_pil(noisy_image(20, 24, 3), "TIFF", compression="tiff_lzw"),
    "tiff16-zstd": _tiff16("zstd"),
    "tiff16-packbits": _tiff16("packbits"),
}


def mutations(data: bytes, seed: int) -> list[bytes]:
    """Half truncations, half 1-8 flipped bytes (the first 8 kept, so most still reach the decoder)."""
    rng = np.random.default_rng(seed)
    cases = []
    for case in range(CASES_PER_FORMAT):
        if case % 2:
            cases.append(data[: int(rng.integers(1, len(data)))])
            continue
        flipped = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            flipped[int(rng.integers(8, len(flipped)))] ^= int(rng.integers(1, 256))
        cases.append(bytes(flipped))
    return cases


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    root = write_fake_suite(tmp_path_factory.mktemp("fuzz-models"))
    async with serve(Settings(models_dir=root, tile_size=64, tile_overlap=2), fake_engine) as c:
        yield c


@pytest.mark.parametrize("name", sorted(SEEDS))
async def test_mutated_images_never_get_a_5xx(client: httpx.AsyncClient, name: str) -> None:
    for index, data in enumerate(mutations(SEEDS[name], seed=sorted(SEEDS).index(name))):
        path = ENDPOINTS[index % len(ENDPOINTS)]
        response = await client.post(path, content=data, headers={"Content-Type": "application/octet-stream"})
        where = f"{name} case {index} on {path}"
        assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
        assert "x-request-id" in response.headers, where
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("image/"), where
        else:
            assert response.headers["content-type"] == "application/problem+json", where
            assert response.json()["status"] == response.status_code, where
