"""The HTTP contract of /derain, /dehaze and /desnow on the committed unified weather model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from skimage import data

from export.session import cpu_session
from export.weather import whole_forward
from restore.core.metrics import psnr
from restore.service.images import codecs
from restore.service.settings import Settings
from tests.conftest import MODELS_DIR, encode_pil, serve
from training.weather.data import add_haze, add_rain, add_snow

pytestmark = pytest.mark.anyio
WEATHER = "weather-unified"
PATHS = ("/derain", "/dehaze", "/desnow")


def photo(height: int = 200, width: int = 296) -> np.ndarray:
    """A real photo crop (scikit-image's bundled astronaut), float RGB in [0, 1]."""
    return data.astronaut()[40 : 40 + height, 100 : 100 + width].astype(np.float32) / 255


def to8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)



@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with serve(Settings(models=(WEATHER,), tile_size=448)) as c:
        yield c


async def post(client: httpx.AsyncClient, image: np.ndarray, path: str = "/derain", query: str = "") -> httpx.Response:
    return await client.post(f"{path}{query}", content=encode_pil(image, "PNG"), headers={"Content-Type": "image/png"})


def whole_image(rgb: np.ndarray, label: str | None = None) -> np.ndarray:
    """One ONNX Runtime run on the whole image, reflect-padded to the model's multiple, told
    ``label`` where the file takes the weather."""
    entry = next(e for e in json.loads((MODELS_DIR / "manifest.json").read_text())["models"] if e["name"] == WEATHER)
    session = cpu_session(MODELS_DIR / entry["file"], 2)
    return to8(whole_forward(session, rgb, label))


async def test_the_three_paths_serve_one_model(client: httpx.AsyncClient) -> None:
    """One file behind three names, each telling it its own weather (``?weather=`` overrides the
    route): a model told the weather answers each route differently."""
    rainy = to8(add_rain(photo(), np.random.default_rng(1)))
    bodies = {}
    for path in PATHS:
        response = await post(client, rainy, path)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png" and response.headers["x-model"] == WEATHER
        bodies[path] = response.content
    assert len(set(bodies.values())) == 3
    overridden = await post(client, rainy, "/dehaze", "?weather=rain")
    assert overridden.content == bodies["/derain"]
    out = codecs.decode(bodies["/derain"], 10**6).color
    assert out.shape == rainy.shape and out.dtype == np.uint8


async def test_haze_rain_and_snow_are_reduced(client: httpx.AsyncClient) -> None:
    """What a user pays for: the restored photo is closer to the clean one than the input.

    Each weather through its own route. Bounds: the committed model's gains on these images
    (3.0.1 through its routes: haze +8.61, rain +3.18, snow +5.14 dB) with margin; an identity or broken model fails every one of them.
    """
    clean = to8(photo())
    for path, degrade, seed, gain in (("/dehaze", add_haze, 3, 6.0), ("/derain", add_rain, 3, 2.0), ("/desnow", add_snow, 4, 3.0)):
        degraded = to8(degrade(photo(), np.random.default_rng(seed)))
        out = codecs.decode((await post(client, degraded, path)).content, 10**6).color
        assert psnr(out, clean) > psnr(degraded, clean) + gain, path


@pytest.mark.parametrize("height,width", [(37, 50), (1, 1), (17, 301)])
async def test_sizes_that_are_not_multiples_of_16(client: httpx.AsyncClient, height: int, width: int) -> None:
    image = to8(photo(height, width))
    response = await post(client, image, "/dehaze")
    assert response.status_code == 200, response.text
    assert codecs.decode(response.content, 10**6).color.shape == (height, width, 3)


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
async def test_tiled_service_output_matches_whole_image_inference(client: httpx.AsyncClient) -> None:
    """tile_size=448 cuts this 400x520 image into several tiles; blended, they match one run."""
    from skimage.transform import resize  # noqa: PLC0415 (scikit-image, dev extra: this reference alone needs it)

    big = to8(add_rain(resize(data.astronaut(), (400, 520), anti_aliasing=True).astype(np.float32), np.random.default_rng(5)))
    served = codecs.decode((await post(client, big)).content, 10**7).color
    assert psnr(served, whole_image(big, "rain")) >= 40.0


async def test_gray_in_gray_out_and_alpha_kept(client: httpx.AsyncClient) -> None:
    gray = to8(photo()[:64, :80].mean(axis=2, keepdims=True))
    out = codecs.decode((await post(client, gray)).content, 10**6)
    assert out.color.shape == (64, 80, 1)
    rgba = np.concatenate([to8(photo()[:64, :80]), np.full((64, 80, 1), 77, np.uint8)], axis=2)
    out = codecs.decode((await post(client, rgba, "/desnow")).content, 10**6)
    assert out.alpha is not None and (out.alpha == 77).all()


async def test_bad_input_is_a_json_4xx(client: httpx.AsyncClient) -> None:
    response = await client.post("/derain", content=b"not an image", headers={"Content-Type": "image/png"})
    assert 400 <= response.status_code < 500 and response.headers["content-type"] == "application/problem+json"
    response = await post(client, to8(photo()[:32, :32]), query="?format=gif")
    assert response.status_code == 422 and "format" in response.json()["detail"]


async def test_openapi_lists_the_aliases(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in PATHS:
        assert "post" in paths[path] and "format" in json.dumps(paths[path]["post"]["parameters"])
