"""Model 3's weather input through the service: each route passes its own label, ``weather=auto``
passes ``unknown``, and tiles of different routes batched together keep their own labels.

A tiny conditioned WeatherNet with random weights (labels change its output) is exported as the
service exports the real one (fused, ``weather`` input) and served through ONNX Runtime; every
response is compared with one whole-image ONNX Runtime run under the expected label.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch

from restore.core.hashing import sha256_file
from restore.core.manifest import write_manifest
from export.onnx_export import export_onnx
from models.weathernet import WEATHER_LABELS, WeatherNet, WeatherNetConfig, fuse_for_inference
from restore.service.images import codecs
from restore.service.settings import Settings
from tests.conftest import encode_pil, serve

pytestmark = pytest.mark.anyio
MULTIPLE = 16


@pytest.fixture(scope="module")
def tiny_weather(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weather3")
    torch.manual_seed(0)
    model = WeatherNet(WeatherNetConfig(width=8, max_channels=16, encoder_blocks=(1, 1, 1, 1), middle_blocks=1,
                                        decoder_blocks=(1, 1, 1, 1), conditions=4, upsample="bilinear"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_onnx(fuse_for_inference(model.eval()), root / "w.onnx", (1, 3, 64, 64), check_shape=(2, 3, 48, 80),
                conditions=len(WEATHER_LABELS))
    write_manifest(root / "manifest.json", [{
        "name": "weather-unified", "task": "weather", "file": "w.onnx", "sha256": sha256_file(root / "w.onnx"),
        "version": "3-test", "channels": 3, "sigma": None, "overlap": 32, "multiple": MULTIPLE, "default": True,
        "weather_labels": list(WEATHER_LABELS), "provenance": {}, "metrics": {},
    }])
    return root


@pytest.fixture(scope="module")
async def client(tiny_weather: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(Settings(models_dir=tiny_weather, tile_size=256, max_batch=8)) as c:
        yield c


def whole(root: Path, rgb: np.ndarray, label: str) -> np.ndarray:
    session = ort.InferenceSession(str(root / "w.onnx"), providers=["CPUExecutionProvider"])
    h, w = rgb.shape[:2]
    x = np.pad(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255,
               ((0, 0), (0, 0), (0, -h % MULTIPLE), (0, -w % MULTIPLE)), mode="reflect")
    condition = np.eye(len(WEATHER_LABELS), dtype=np.float32)[[WEATHER_LABELS.index(label)]]
    (y,) = session.run(["output"], {"input": x, "weather": condition})
    return np.round(np.clip(y[0, :, :h, :w].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


def closest_label(root: Path, image: np.ndarray, out: np.ndarray) -> tuple[str, float]:
    """The label whose whole-image run the service's (tiled, padded) output is nearest to, and
    that distance (mean absolute 8-bit difference; borders are padded differently, so not 0)."""
    distances = {label: float(np.abs(out.astype(int) - whole(root, image, label).astype(int)).mean())
                 for label in WEATHER_LABELS}
    best = min(distances, key=distances.__getitem__)
    return best, distances[best]


def photo(seed: int, height: int = 75, width: int = 93) -> np.ndarray:
    """Odd sides: the service pads to the model's multiple and crops back."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


async def post(client: httpx.AsyncClient, image: np.ndarray, path: str) -> httpx.Response:
    return await client.post(path, content=encode_pil(image, "PNG"), headers={"Content-Type": "image/png"})


@pytest.mark.parametrize(("path", "label"), [
    ("/derain", "rain"), ("/dehaze", "haze"), ("/desnow", "snow"),
    ("/derain?weather=auto", "unknown"), ("/desnow?weather=haze", "haze"),
])
async def test_each_route_passes_its_label(client: httpx.AsyncClient, tiny_weather: Path, path: str, label: str) -> None:
    image = photo(1)
    response = await post(client, image, path)
    assert response.status_code == 200, response.text
    assert response.headers["x-weather"] == label
    out = codecs.decode(response.content, 10**6).color
    assert closest_label(tiny_weather, image, out) == (label, pytest.approx(0, abs=0.2))


async def test_the_labels_change_the_output(client: httpx.AsyncClient) -> None:
    image = photo(2)
    bodies = {path: (await post(client, image, path)).content for path in ("/derain", "/dehaze", "/derain?weather=auto")}
    assert len(set(bodies.values())) == 3


async def test_tiles_of_different_routes_batched_together_keep_their_labels(client: httpx.AsyncClient, tiny_weather: Path) -> None:
    images = [photo(10 + k, 200, 300) for k in range(6)]  # two 256 px tiles each: batches mix requests
    paths = ["/derain", "/dehaze", "/desnow", "/derain?weather=auto", "/dehaze", "/derain"]
    labels = ["rain", "haze", "snow", "unknown", "haze", "rain"]
    responses = await asyncio.gather(*(post(client, image, path) for image, path in zip(images, paths)))
    for image, response, label in zip(images, responses, labels):
        assert response.status_code == 200, response.text
        out = codecs.decode(response.content, 10**6).color
        assert closest_label(tiny_weather, image, out) == (label, pytest.approx(0, abs=0.2))


async def test_an_unknown_weather_is_a_422(client: httpx.AsyncClient) -> None:
    response = await post(client, photo(3), "/derain?weather=fog")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
