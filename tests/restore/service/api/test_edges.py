"""The HTTP contract of /edges on the committed HED model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from restore.service.images import codecs
from restore.service.settings import Settings
from tests.conftest import MODELS_DIR, encode_pil, serve

pytestmark = pytest.mark.anyio
HED = "hed-bsds500"


def shapes(height: int = 96, width: int = 128) -> np.ndarray:
    """Flat regions with sharp boundaries: where an edge detector must fire, and where not."""
    image = Image.new("RGB", (width, height), (40, 60, 90))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 12, 60, 70), fill=(220, 200, 40))
    draw.ellipse((70, 20, 118, 80), fill=(30, 180, 70))
    return np.asarray(image)


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # float32: the references below run the float file whole; the int8 variant has its own gate (docs/benchmarks.md)
    async with serve(Settings(models=(HED,), tile_size=256, precision="float32")) as c:
        yield c


async def post(client: httpx.AsyncClient, query: str = "", image: np.ndarray | None = None) -> httpx.Response:
    body = encode_pil(shapes() if image is None else image, "PNG")
    return await client.post(f"/edges{query}", content=body, headers={"Content-Type": "image/png"})


async def test_edges_is_a_one_channel_8bit_png_that_fires_on_boundaries(client: httpx.AsyncClient) -> None:
    response = await post(client)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.headers["x-model"] == HED
    out = codecs.decode(response.content, 10**6)
    assert out.color.shape == (96, 128, 1) and out.color.dtype == np.uint8
    edges = out.color[:, :, 0].astype(float)
    assert edges[12, 20:50].mean() > 3 * edges[30:50, 20:50].mean()  # rectangle's top edge vs its inside


async def test_gray_input_is_served(client: httpx.AsyncClient) -> None:
    response = await post(client, image=shapes()[:, :, :1].copy())
    assert response.status_code == 200 and codecs.decode(response.content, 10**6).color.shape == (96, 128, 1)


async def test_thin_edges_are_one_pixel_wide(client: httpx.AsyncClient) -> None:
    out = codecs.decode((await post(client, "?thin=true")).content, 10**6).color[:, :, 0] > 0
    assert out.any()
    blocks = out[:-1, :-1] & out[1:, :-1] & out[:-1, 1:] & out[1:, 1:]
    assert not blocks.any()


async def test_threshold_gives_a_binary_map(client: httpx.AsyncClient) -> None:
    out = codecs.decode((await post(client, "?threshold=0.5")).content, 10**6).color
    assert set(np.unique(out)) <= {0, 255} and (out == 255).any()


async def test_side_outputs_differ_from_the_fusion(client: httpx.AsyncClient) -> None:
    fuse = codecs.decode((await post(client)).content, 10**6).color
    side5 = codecs.decode((await post(client, "?side=5")).content, 10**6).color
    assert fuse.shape == side5.shape and np.abs(fuse.astype(int) - side5.astype(int)).mean() > 1


@pytest.mark.parametrize("fmt,kind", [("png", "image/png"), ("tiff", "image/tiff")])
async def test_16bit_raw_probabilities(client: httpx.AsyncClient, fmt: str, kind: str) -> None:
    response = await post(client, f"?depth=16&format={fmt}")
    assert response.headers["content-type"] == kind
    out = codecs.decode(response.content, 10**6).color
    assert out.dtype == np.uint16 and len(np.unique(out)) > 256


@pytest.mark.parametrize("query", ["?threshold=1.5", "?threshold=x", "?side=7", "?thin=maybe", "?depth=12", "?depth=16&format=jpeg"])
async def test_bad_options_are_422(client: httpx.AsyncClient, query: str) -> None:
    response = await post(client, query)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"


async def test_openapi_documents_the_options(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/edges"]["post"]
    assert {p["name"] for p in operation["parameters"]} >= {"thin", "threshold", "side", "depth", "format"}


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
async def test_tiled_service_output_matches_whole_image_inference(client: httpx.AsyncClient) -> None:
    """The fixture's 256 px tiles cut this image into several; the result must equal one whole run."""
    image = np.asarray(Image.fromarray(shapes(300, 400)).resize((400, 300)))
    rng = np.random.default_rng(0)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    response = await post(client, "?depth=16", image=image)
    tiled = codecs.decode(response.content, 10**6).color[:, :, 0] / 65535
    session = ort.InferenceSession(str(MODELS_DIR / f"{HED}.onnx"), providers=["CPUExecutionProvider"])
    padded = np.pad(image, ((0, 4), (0, 0), (0, 0)), mode="reflect")  # to the model's multiple of 16
    whole = session.run(None, {"input": padded.transpose(2, 0, 1)[None].astype(np.float32) / 255})[0][0, 0, :300]
    assert np.abs(tiled - whole).max() < 2e-3


async def test_multiscale_matches_whole_image_multiscale_inference(client: httpx.AsyncClient) -> None:
    """?scales=0.5,1,1.5 on the real model against the computation written out with Pillow and
    whole-image ORT runs: resize the photo bilinearly, run it whole, resize the fused map back
    bilinearly, average. At 1.5 the 168x176 photo is 252x264, two of the fixture's 256 px tiles
    (HED's 242 px overlap makes every extra tile cost a whole one, so the image is kept small)."""
    rng = np.random.default_rng(1)
    image = np.clip(shapes(168, 176) + rng.normal(0, 8, (168, 176, 3)), 0, 255).astype(np.uint8)
    response = await post(client, "?scales=0.5,1,1.5&depth=16", image=image)
    assert response.status_code == 200, response.text
    served = codecs.decode(response.content, 10**6).color
    assert served.shape == (168, 176, 1)
    session = ort.InferenceSession(str(MODELS_DIR / f"{HED}.onnx"), providers=["CPUExecutionProvider"])
    maps = []
    for scale in (0.5, 1.0, 1.5):
        height, width = round(168 * scale), round(176 * scale)
        scaled = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
        padded = np.pad(scaled, ((0, -height % 16), (0, -width % 16), (0, 0)), mode="reflect")
        fused = session.run(None, {"input": padded.transpose(2, 0, 1)[None].astype(np.float32) / 255})[0][0, 0, :height, :width]
        maps.append(np.asarray(Image.fromarray(fused).resize((176, 168), Image.Resampling.BILINEAR)))
    reference = np.clip(np.mean(maps, axis=0), 0, 1)
    assert np.abs(served[:, :, 0] / 65535 - reference).max() < 2e-3
    single = codecs.decode((await post(client, "?depth=16", image=image)).content, 10**6).color[:, :, 0] / 65535
    assert np.abs(single - reference).mean() > 1e-3  # three scales are not one
