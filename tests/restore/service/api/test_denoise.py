"""The HTTP contract of /denoise and the operational endpoints, on the committed DnCNN models."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageCms

from restore.core.metrics import psnr
from restore.service.app import create_app
from restore.service.errors import InferenceFailed, StartupError, public_detail
from restore.service.images import codecs
from restore.service.inference.engine import OrtEngine
from restore.service.settings import Settings
from tests.conftest import MODELS_DIR, SHARED, BoxEngine, asgi_scope, encode_pil, fake_engine, noisy_image, serve, write_fake_manifest, write_fake_suite
from tests.restore.service.images.test_codecs import decompression_bomb

pytestmark = pytest.mark.anyio
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with serve(Settings(max_body_bytes=2 * 1024 * 1024)) as c:
        yield c


def decode(response: httpx.Response) -> codecs.DecodedImage:
    return codecs.decode(response.content, 10**8)


async def test_ready_and_models_listing(client: httpx.AsyncClient) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    listing = (await client.get("/v1/models")).json()
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    assert {m["name"] for m in listing["models"]} == {m["name"] for m in manifest["models"] if m["default"]}
    assert all(m["provider"] == "CPUExecutionProvider" and m["status"] == "ready" for m in listing["models"])
    assert all(m["tile"]["overlap"] >= 2 * m["overlap"] for m in listing["models"])


@pytest.mark.parametrize("channels,model", [(1, "dncnn-gray-blind"), (3, "dncnn-color-blind")])
async def test_denoise_picks_the_model_for_the_image_and_reduces_noise(
    client: httpx.AsyncClient, channels: int, model: str
) -> None:
    rng = np.random.default_rng(1)
    clean = noisy_image(48, 64, channels, seed=5, noise=0.0)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    response = await client.post("/denoise", content=encode_pil(noisy, "PNG"), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model"] == model
    out = decode(response).color
    assert out.shape == clean.shape
    error_before = np.abs(noisy.astype(float) - clean).mean()
    error_after = np.abs(out.astype(float) - clean).mean()
    assert error_after < 0.6 * error_before


@pytest.mark.parametrize("sigma,model", [(15, "dncnn-gray-s15"), (25, "dncnn-gray-s25"), (50, "dncnn-gray-s50")])
async def test_sigma_selects_the_specific_model(client: httpx.AsyncClient, sigma: int, model: str) -> None:
    png = encode_pil(noisy_image(20, 20, 1), "PNG")
    response = await client.post(f"/denoise?sigma={sigma}", files={"image": ("x.png", png, "image/png")})
    assert response.status_code == 200 and response.headers["x-model"] == model


@pytest.mark.parametrize("query", ["sigma=17", "sigma=abc", "sigma=-5", "format=gif"])
async def test_bad_parameters_are_422_problems(client: httpx.AsyncClient, query: str) -> None:
    png = encode_pil(noisy_image(8, 8, 1), "PNG")
    response = await client.post(f"/denoise?{query}", content=png, headers={"Content-Type": "image/png"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert set(response.json()) >= {"type", "title", "status", "detail"}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP"])
async def test_every_input_format_comes_back_in_kind(client: httpx.AsyncClient, fmt: str) -> None:
    data = encode_pil(noisy_image(16, 24, 3), fmt)
    response = await client.post("/denoise", content=data, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    expected = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "TIFF": "tiff", "BMP": "png"}[fmt]
    assert response.headers["content-type"] == f"image/{expected}"
    assert Image.open(io.BytesIO(response.content)).size == (24, 16)


async def test_format_negotiation(client: httpx.AsyncClient) -> None:
    png = encode_pil(noisy_image(16, 16, 3), "PNG")
    headers = {"Content-Type": "image/png"}
    by_accept = await client.post("/denoise", content=png, headers={**headers, "Accept": "image/webp"})
    assert by_accept.headers["content-type"] == "image/webp"
    by_query = await client.post("/denoise?format=jpeg", content=png, headers={**headers, "Accept": "image/webp"})
    assert by_query.headers["content-type"] == "image/jpeg"
    refused = await client.post("/denoise", content=png, headers={**headers, "Accept": "application/json"})
    assert refused.status_code == 406 and refused.headers["content-type"] == PROBLEM


async def test_alpha_passes_through_untouched_and_icc_is_kept(client: httpx.AsyncClient) -> None:
    rgba = np.dstack([noisy_image(20, 30, 3), noisy_image(20, 30, 1, seed=7)])
    data = encode_pil(rgba, "PNG", icc_profile=SRGB_ICC)
    response = await client.post("/denoise", content=data, headers={"Content-Type": "image/png"})
    out = decode(response)
    np.testing.assert_array_equal(out.alpha, rgba[:, :, 3])
    assert out.icc_profile == SRGB_ICC


@pytest.mark.parametrize("fmt", ["png", "tiff"])
async def test_16bit_in_gives_16bit_out(client: httpx.AsyncClient, fmt: str) -> None:
    color = noisy_image(20, 18, 3, dtype=np.uint16)
    data = codecs.encode(color, None, None, fmt)  # type: ignore[arg-type]
    response = await client.post("/denoise", content=data)
    out = decode(response)
    assert out.color.dtype == np.uint16 and out.color.shape == color.shape
    assert len(np.unique(out.color)) > 256  # real 16-bit precision, not 8-bit values scaled up


async def test_exif_orientation_is_applied(client: httpx.AsyncClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode_pil(noisy_image(10, 30, 3), "JPEG", exif=exif.tobytes(), quality=95)
    response = await client.post("/denoise", content=data)
    assert Image.open(io.BytesIO(response.content)).size == (10, 30)


async def test_cmyk_jpeg_is_served(client: httpx.AsyncClient) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noisy_image(16, 16, 3)).convert("CMYK").save(buffer, "JPEG")
    response = await client.post("/denoise", content=buffer.getvalue())
    assert response.status_code == 200 and decode(response).channels == 3


@pytest.mark.parametrize(
    "body,content_type,status",
    [
        (b"", "image/png", 422),
        (b"hello, world", "text/plain", 415),
        (b"hello, world", "application/octet-stream", 415),
        ("gif", "image/gif", 415),
        ("png-truncated", "image/png", 422),
        ("jpeg-truncated", "image/jpeg", 422),
        ("bomb", "image/png", 413),
        ("oversize", "image/png", 413),
    ],
)
async def test_bad_input_gets_a_clear_problem(client: httpx.AsyncClient, body: object, content_type: str, status: int) -> None:
    png = encode_pil(noisy_image(64, 64, 3), "PNG")
    jpeg = encode_pil(noisy_image(64, 64, 3), "JPEG")
    payload = {
        "gif": encode_pil(noisy_image(4, 4, 3), "GIF"),
        "png-truncated": png[: len(png) // 2],
        "jpeg-truncated": jpeg[: len(jpeg) // 2],
        "bomb": decompression_bomb(200_000, 200_000),
        "oversize": b"\x89PNG" + bytes(3 * 1024 * 1024),
    }.get(body, body)  # type: ignore[call-overload]
    response = await client.post("/denoise", content=payload, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == status
    assert (await client.get("/healthz")).status_code == 200


async def test_multipart_without_image_field_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/denoise", files={"picture": ("x.png", b"123", "image/png")})
    assert response.status_code == 422 and "image" in response.json()["detail"]


async def test_request_id_is_echoed_and_server_timing_sent(client: httpx.AsyncClient) -> None:
    png = encode_pil(noisy_image(8, 8, 1), "PNG")
    response = await client.post("/denoise", content=png, headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    stages = [part.split(";")[0].strip() for part in response.headers["server-timing"].split(",")]
    assert stages == ["decode", "estimate", "queue", "infer", "encode"]  # the noise is estimated by default
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32


async def test_metrics_expose_requests_queue_tiles_batches_and_provider(client: httpx.AsyncClient) -> None:
    await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"))
    text = (await client.get("/metrics")).text
    for needle in (
        'restore_requests_total{endpoint="/denoise",status="200"}',
        "restore_request_duration_seconds_bucket",
        'restore_queue_depth_tiles{model="dncnn-gray-blind"}',
        'restore_tiles_total{model="dncnn-gray-blind"}',
        "restore_batch_size_tiles_bucket",
        "restore_inference_seconds_bucket",
        'restore_execution_provider{model="dncnn-gray-blind",provider="CPUExecutionProvider"} 1.0',
    ):
        assert needle in text, needle


async def test_openapi_documents_the_endpoint(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/denoise"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {p["name"] for p in operation["parameters"]} >= {"sigma", "format"}
    assert (await client.get("/docs")).status_code == 200


async def test_api_keys_guard_model_endpoints_only() -> None:
    models = ("dncnn-gray-blind",)
    async with serve(Settings(api_keys=("k1", "k2"), models=models)) as client:
        png = encode_pil(noisy_image(8, 8, 1), "PNG")
        assert (await client.post("/denoise", content=png)).status_code == 401
        wrong = await client.post("/denoise", content=png, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = await client.post("/denoise", content=png, headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200


async def test_corrupted_model_is_not_ready_while_the_others_serve(tmp_path: Path) -> None:
    models = tmp_path / "onnx"
    shutil.copytree(MODELS_DIR, models)
    target = models / "dncnn-color-blind.onnx"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    settings = Settings(models_dir=models, models=("dncnn-gray-blind", "dncnn-color-blind"))
    async with serve(settings, wait_ready=False) as client:
        for _ in range(200):
            ready = await client.get("/readyz")
            if "loading" not in ready.text and "waiting" not in ready.text:
                break
            await asyncio.sleep(0.05)
        assert ready.status_code == 503
        assert list(ready.json()["not_ready"]) == ["dncnn-color-blind"]
        assert "sha256" in ready.json()["not_ready"]["dncnn-color-blind"]
        gray = await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"))
        assert gray.status_code == 200
        color = await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 3), "PNG"))
        assert color.status_code == 503 and color.headers["content-type"] == PROBLEM


async def test_not_ready_until_warm_up_finishes(tmp_path: Path) -> None:
    gate = threading.Event()
    root = write_fake_manifest(tmp_path, [{"name": "fake"}])
    async with serve(Settings(models_dir=root), lambda spec: BoxEngine(gate=gate), wait_ready=False) as client:
        first = await client.get("/readyz")
        assert first.status_code == 503 and "fake" in first.json()["not_ready"]
        busy = await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"))
        assert busy.status_code == 503 and "Retry-After" in busy.headers
        gate.set()
        for _ in range(100):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert (await client.get("/readyz")).status_code == 200


def test_cuda_device_without_gpu_refuses_to_start() -> None:
    with pytest.raises(StartupError, match="cuda"):
        create_app(Settings(device="cuda"))


def test_engine_uses_requested_threads() -> None:
    engine = OrtEngine(MODELS_DIR / "dncnn-gray-s25.onnx", Settings(intra_op_threads=1), ["CPUExecutionProvider"])
    out = engine.infer(np.zeros((2, 1, 9, 11), np.float32))
    assert out.shape == (2, 1, 9, 11) and engine.provider == "CPUExecutionProvider"


async def test_client_that_disconnects_has_its_tiles_dropped(tmp_path: Path) -> None:
    """Drive the ASGI app directly so the client can vanish after sending its body."""
    gate = threading.Event()
    engine = BoxEngine(radius=1)
    root = write_fake_manifest(tmp_path, [{"name": "fake"}])
    app = create_app(Settings(models_dir=root, tile_size=32, tile_overlap=2, max_batch=1), engine_factory=lambda s: engine)
    body = encode_pil(noisy_image(90, 90, 1), "PNG")
    async with app.router.lifespan_context(app):
        for _ in range(100):
            if app.state.runtime.ready:
                break
            await asyncio.sleep(0.02)
        engine.gate = gate
        leave = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []  # type: ignore[type-arg]

        async def receive() -> dict:  # type: ignore[type-arg]
            if messages:
                return messages.pop(0)
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:  # type: ignore[type-arg]
            sent.append(message)

        scope = asgi_scope("/denoise", [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())])
        call = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.3)  # tiles queued, one batch held by the gate
        leave.set()
        await asyncio.sleep(0.1)
        gate.set()
        await call
        runtime = app.state.runtime
        assert runtime.models["fake"].scheduler.depth == 0
        assert runtime.models["fake"].scheduler.queued_seconds() == 0  # its queue place was given back,
        assert app.state.in_flight.empty  # and its in-flight budgets
        dropped = runtime.metrics.dropped_tiles.labels("fake")._value.get()
        assert dropped >= 8  # 16 tiles, at most a couple inferred before the client left
        assert len(engine.batches) <= 3


@pytest.fixture
async def fake_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Fake models behind every endpoint (tests/conftest.py), API keys on, one non-ASCII."""
    settings = Settings(models_dir=write_fake_suite(tmp_path), tile_size=64, tile_overlap=2, api_keys=("k1", "clé"))
    async with serve(settings, fake_engine) as c:
        c.headers["Authorization"] = "Bearer k1"
        yield c


@pytest.mark.parametrize("key", ["clé".encode(), "clé".encode("latin-1"), "ключ".encode(), b"\xff\xfe"])
async def test_non_ascii_bearer_tokens_are_compared_as_bytes(fake_client: httpx.AsyncClient, key: bytes) -> None:
    png = encode_pil(noisy_image(8, 8, 1), "PNG")
    response = await fake_client.post("/denoise", content=png, headers={"Authorization": b"Bearer " + key})
    assert response.status_code == (200 if key == "clé".encode() else 401), response.text
    if response.status_code == 401:
        assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    ("path", "query", "named"),
    [
        ("/denoise", "sigma=25&sigma=50", "'sigma' is given 2 times"),
        ("/denoise", "sigmaa=25", "unknown query parameter 'sigmaa'"),
        ("/derain", "sigma=25", "unknown query parameter 'sigma'"),
        ("/edges", "thin=true&thin=false", "'thin' is given 2 times"),
        ("/edges", "format=png&Format=png", "unknown query parameter 'Format'"),
    ],
)
async def test_repeated_or_unknown_query_parameters_are_422(
    fake_client: httpx.AsyncClient, path: str, query: str, named: str
) -> None:
    response = await fake_client.post(f"{path}?{query}", content=encode_pil(noisy_image(8, 8, 1), "PNG"))
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert named in response.json()["detail"]


@pytest.mark.parametrize(
    ("width", "height", "query", "accept", "status"),
    [
        (20000, 1, "format=webp", None, 422),  # WebP: 16383 px a side
        (70000, 2, "format=jpeg", None, 422),  # JPEG: 65500
        (20000, 1, "", "image/webp", 406),
        (70000, 2, "", "image/jpeg, image/webp", 406),
    ],
)
async def test_output_limits_are_refused_before_inference(
    tmp_path: Path, width: int, height: int, query: str, accept: str | None, status: int
) -> None:
    engine = BoxEngine(radius=1)
    async with serve(Settings(models_dir=write_fake_suite(tmp_path)), lambda spec: engine) as client:
        warmed = len(engine.batches)
        headers = {"Accept": accept} if accept else {}
        response = await client.post(f"/denoise?{query}", content=encode_pil(noisy_image(height, width, 1), "PNG"), headers=headers)
        assert response.status_code == status and response.headers["content-type"] == PROBLEM
        assert "65500" in response.text or "16383" in response.text
        assert len(engine.batches) == warmed  # no tile was inferred


async def test_an_accept_that_cannot_hold_the_image_falls_back_to_one_that_can(fake_client: httpx.AsyncClient) -> None:
    png = encode_pil(noisy_image(1, 20000, 1), "PNG")
    response = await fake_client.post("/denoise", content=png, headers={"Accept": "image/webp, image/png;q=0.5"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


async def test_unacceptable_output_is_406_before_the_body_is_read(fake_client: httpx.AsyncClient) -> None:
    """Not even a valid image is needed: Accept and depth alone rule every format out."""
    for path, accept in (("/denoise", "application/json"), ("/edges?depth=16", "image/jpeg, image/webp")):
        response = await fake_client.post(path, content=b"not read", headers={"Accept": accept})
        assert response.status_code == 406 and response.headers["content-type"] == PROBLEM


def _photo_with_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"
    return encode_pil(noisy_image(10, 30, 3), "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("keep", [True, False])
async def test_exif_is_kept_upright_or_stripped(tmp_path: Path, keep: bool) -> None:
    settings = Settings(models_dir=write_fake_suite(tmp_path), keep_metadata=keep)
    async with serve(settings, fake_engine) as client:
        for fmt in ("jpeg", "png", "webp", "tiff"):
            response = await client.post(f"/derain?format={fmt}", content=_photo_with_exif(6))
            image = Image.open(io.BytesIO(response.content))
            assert image.size == (10, 30)
            exif = image.getexif()
            if keep:
                assert exif[0x0112] == 1 and exif[0x010F] == "Canon", fmt
            else:
                assert 0x010F not in exif, fmt


async def test_errors_name_the_model_never_a_server_path(tmp_path: Path) -> None:
    """A file ONNX Runtime cannot parse (its error text names the full path) and a failing batch."""
    root = write_fake_manifest(tmp_path / "models", [{"name": "broken"}])  # its bytes are not ONNX
    async with serve(Settings(models_dir=root), wait_ready=False) as client:
        for _ in range(200):
            ready = await client.get("/readyz")
            if ready.json()["not_ready"].get("broken", "").startswith("failed"):
                break
            await asyncio.sleep(0.05)
        detail = ready.json()["not_ready"]["broken"]
        assert "broken" in detail and str(tmp_path) not in detail and "/" not in detail
        refused = await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"))
        assert refused.status_code == 503 and str(tmp_path) not in refused.text
    engine = OrtEngine(MODELS_DIR / "dncnn-gray-s25.onnx", Settings(intra_op_threads=1), ["CPUExecutionProvider"], name="dncnn-gray-s25")
    with pytest.raises(InferenceFailed) as failed:
        engine.infer(np.zeros((1, 3, 8, 8), np.float32))  # three channels into a gray model
    assert "dncnn-gray-s25" in failed.value.detail and str(MODELS_DIR) not in failed.value.detail


def test_os_errors_show_the_file_name_only() -> None:
    error = PermissionError(13, "Permission denied", "/srv/models/onnx/x.onnx")
    assert public_detail(error) == "Permission denied: x.onnx"


@pytest.fixture
async def levels_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Fake colour models for every level and a blind one; a blind and a sigma 25 gray model."""
    root = write_fake_manifest(tmp_path / "models", [
        {"name": "colour", "channels": 3}, {"name": "colour-s15", "channels": 3, "sigma": 15},
        {"name": "colour-s25", "channels": 3, "sigma": 25}, {"name": "colour-s50", "channels": 3, "sigma": 50},
        {"name": "gray"}, {"name": "gray-s25", "sigma": 25},
    ])
    async with serve(Settings(models_dir=root, tile_size=64, tile_overlap=2), fake_engine) as client:
        yield client


def _photo(sigma: float, channels: int = 3, fmt: str = "PNG", size: int = 96) -> bytes:
    """A smooth scene with Gaussian noise of ``sigma`` per channel, as PNG or JPEG (quality 90, 4:2:0)."""
    clean = noisy_image(size, size, channels, seed=3, noise=0.0).astype(float)
    noisy = np.clip(np.round(clean + np.random.default_rng(int(sigma)).normal(0, sigma, clean.shape)), 0, 255)
    options = {"quality": 90, "subsampling": 2} if fmt == "JPEG" else {}
    return encode_pil(noisy.astype(np.uint8), fmt, **options)


@pytest.mark.parametrize(
    "sigma,channels,fmt,model",
    [
        (25, 3, "PNG", "colour"), (50, 3, "PNG", "colour"), (25, 1, "PNG", "gray"), (25, 1, "JPEG", "gray"),
        (0, 3, "JPEG", "colour"), (15, 3, "JPEG", "colour-s15"), (25, 3, "JPEG", "colour-s25"), (50, 3, "JPEG", "colour-s50"),
    ],
)
async def test_sigma_auto_estimates_the_level_and_picks_the_model(
    levels_client: httpx.AsyncClient, sigma: float, channels: int, fmt: str, model: str
) -> None:
    """White noise keeps the blind model; noise under JPEG 4:2:0 chroma gets the level's model."""
    response = await levels_client.post("/denoise?sigma=auto", content=_photo(sigma, channels, fmt))
    assert response.status_code == 200, response.text
    estimate = float(response.headers["x-noise-sigma"])
    assert abs(estimate - sigma) <= max(0.12 * sigma, 2.0), estimate
    assert response.headers["x-model"] == model
    assert "estimate;dur=" in response.headers["server-timing"]


async def test_sigma_auto_on_an_image_too_small_to_tell_uses_the_blind_model(levels_client: httpx.AsyncClient) -> None:
    response = await levels_client.post("/denoise?sigma=auto", content=encode_pil(noisy_image(8, 8, 3), "JPEG"))
    assert response.status_code == 200
    assert (response.headers["x-noise-sigma"], response.headers["x-model"]) == ("unknown", "colour")


async def test_estimating_is_the_default_and_blind_or_a_level_skip_it(levels_client: httpx.AsyncClient) -> None:
    default = await levels_client.post("/denoise", content=_photo(25, fmt="JPEG"))
    assert default.headers["x-model"] == "colour-s25" and "estimate;dur=" in default.headers["server-timing"]
    assert abs(float(default.headers["x-noise-sigma"]) - 25) <= 3
    for query, model in (("?sigma=blind", "colour"), ("?sigma=25", "colour-s25")):
        response = await levels_client.post(f"/denoise{query}", content=_photo(25, fmt="JPEG"))
        assert response.status_code == 200 and "x-noise-sigma" not in response.headers
        assert response.headers["x-model"] == model and "estimate" not in response.headers["server-timing"]


@pytest.mark.parametrize(
    "query,channels,model",
    [("model=colour-s50", 3, "colour-s50"), ("model=gray-s25", 1, "gray-s25"), ("model=colour", 1, "colour")],
)
async def test_model_names_the_model(levels_client: httpx.AsyncClient, query: str, channels: int, model: str) -> None:
    """A colour model takes a gray image (as RGB); the name wins over what sigma would have chosen."""
    response = await levels_client.post(f"/denoise?{query}", content=_photo(25, channels))
    assert response.status_code == 200, response.text
    assert response.headers["x-model"] == model and "x-noise-sigma" not in response.headers


@pytest.mark.parametrize(
    "query,channels,detail",
    [
        ("model=nope", 3, "'nope' is not a loaded denoise model; loaded: ['colour', 'colour-s15'"),
        ("model=gray-s25", 3, "'gray-s25' takes 1-channel images, this one has 3"),
        ("model=colour&sigma=25", 3, "give sigma or model, not both"),
        ("model=colour&sigma=auto", 3, "give sigma or model, not both"),
        ("model=colour&sigma=blind", 3, "give sigma or model, not both"),
        ("model=", 3, "at least 1 character"),
    ],
)
async def test_a_model_that_cannot_serve_the_image_is_a_422(
    levels_client: httpx.AsyncClient, query: str, channels: int, detail: str
) -> None:
    response = await levels_client.post(f"/denoise?{query}", content=_photo(25, channels))
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert detail in response.text


async def test_of_two_blind_models_the_first_in_the_manifest_serves_sigma_blind(tmp_path: Path) -> None:
    """Two default blind colour models (camera noise, Gaussian): the manifest's order decides, ?model= picks the other."""
    root = write_fake_manifest(tmp_path / "models", [{"name": "colour-camera", "channels": 3}, {"name": "colour", "channels": 3}])
    async with serve(Settings(models_dir=root, tile_size=64, tile_overlap=2), fake_engine) as client:
        for query, model in (("?sigma=blind", "colour-camera"), ("?model=colour", "colour"), ("?model=colour-camera", "colour-camera")):
            response = await client.post(f"/denoise{query}", content=_photo(25))
            assert response.headers["x-model"] == model


@pytest.mark.parametrize(
    "query,sigma,fmt,model",
    [
        ("?sigma=auto", 25, "JPEG", "colour-camera"), ("?sigma=auto", 50, "JPEG", "colour-camera"),
        ("?sigma=auto", 25, "PNG", "colour"), ("?sigma=auto", 0, "JPEG", "colour"),
        ("", 25, "JPEG", "colour-camera"), ("", 25, "PNG", "colour"), ("?sigma=blind", 25, "JPEG", "colour-camera"),
        ("?sigma=25", 25, "JPEG", "colour-s25"),
    ],
)
async def test_sigma_auto_sends_420_noise_to_a_camera_model(tmp_path: Path, query: str, sigma: float, fmt: str, model: str) -> None:
    """Listed first, the camera model serves sigma=blind; sigma=auto (also the default) gives it only
    noise under 4:2:0 chroma (white noise and clean JPEGs keep the Gaussian blind model)."""
    root = write_fake_manifest(tmp_path / "models", [
        {"name": "colour-camera", "channels": 3, "noise": "camera"}, {"name": "colour", "channels": 3},
        {"name": "colour-s25", "channels": 3, "sigma": 25},
    ])
    async with serve(Settings(models_dir=root, tile_size=64, tile_overlap=2), fake_engine) as client:
        response = await client.post(f"/denoise{query}", content=_photo(sigma, fmt=fmt))
        assert response.status_code == 200, response.text
        assert response.headers["x-model"] == model
        models = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
    assert models["colour-camera"]["noise"] == "camera" and models["colour"]["noise"] == "gaussian"


async def test_sigma_auto_gives_back_its_place_on_both_queues(tmp_path: Path) -> None:
    """Priced on the blind model, moved to the level's model: neither queue keeps work afterwards."""
    root = write_fake_manifest(tmp_path / "models", [
        {"name": "colour", "channels": 3}, {"name": "colour-s25", "channels": 3, "sigma": 25},
    ])
    async with serve(Settings(models_dir=root, tile_size=64, tile_overlap=2), fake_engine) as client:
        response = await client.post("/denoise?sigma=auto", content=_photo(25, fmt="JPEG"))
        assert response.headers["x-model"] == "colour-s25"
        queues = (await client.get("/metrics")).text
    assert 'restore_queue_seconds{model="colour"} 0.0' in queues
    assert 'restore_queue_seconds{model="colour-s25"} 0.0' in queues


async def test_openapi_documents_sigma_auto(levels_client: httpx.AsyncClient) -> None:
    operation = (await levels_client.get("/openapi.json")).json()["paths"]["/denoise"]["post"]
    sigma = next(p for p in operation["parameters"] if p["name"] == "sigma")
    assert {"auto", 25, "blind"} <= {example["value"] for example in sigma["examples"].values()}
    assert "auto" in str(sigma["schema"]) and "X-Noise-Sigma" in sigma["description"]
    assert "X-Noise-Sigma" in operation["responses"]["200"]["headers"]


async def test_sigma_auto_removes_the_noise_the_blind_model_leaves_in_a_420_jpeg(client: httpx.AsyncClient) -> None:
    """The committed models on issue 15's case: sigma 25 noise saved as JPEG (quality 90, 4:2:0)."""
    clean = noisy_image(128, 128, 3, seed=3, noise=0.0)
    noisy = np.clip(np.round(clean + np.random.default_rng(0).normal(0, 25, clean.shape)), 0, 255)
    data = encode_pil(noisy.astype(np.uint8), "JPEG", quality=90, subsampling=2)

    def score(response: httpx.Response) -> float:
        return psnr(decode(response).color, clean)

    blind, auto = [await client.post(f"/denoise{query}", content=data) for query in ("?sigma=blind", "")]
    assert blind.headers["x-model"] == "dncnn-color-blind" and auto.headers["x-model"] == "dncnn-color-real"
    assert score(auto) > score(blind) + 6  # measured: 32.2 against 23.7 dB (input 23.0; dncnn-color-s25, the pick before the camera model: 37.2 on this smooth generated scene)


CBSD68 = SHARED / "data" / "denoise" / "CBSD68"


@pytest.mark.shared
@pytest.mark.skipif(not (CBSD68 / "208001.png").is_file(), reason="../shared/data/denoise/CBSD68 is not present")
async def test_the_defaults_clean_a_phone_style_photo(client: httpx.AsyncClient) -> None:
    """Issue 30's newcomer: Gaussian noise of sigma 15, then JPEG quality 75 with 4:2:0 chroma, sent
    with no parameter. 208001 is an image near the median of CBSD68 under this recipe with the
    defaults (+3.03 dB; docs/dncnn.md: mean +3.24 dB, the blind model +0.08 dB); it must gain 2.5 dB."""
    clean = np.asarray(Image.open(CBSD68 / "208001.png").convert("RGB")).astype(float)
    noisy = np.clip(np.round(clean + np.random.default_rng(0).normal(0, 15, clean.shape)), 0, 255).astype(np.uint8)
    data = encode_pil(noisy, "JPEG", quality=75, subsampling=2)

    def psnr(pixels: np.ndarray) -> float:
        return float(10 * np.log10(255**2 / np.mean((pixels.astype(float) - clean) ** 2)))

    before = psnr(codecs.decode(data, 10**8).color)
    response = await client.post("/denoise", content=data)
    assert response.status_code == 200, response.text
    gain = psnr(decode(response).color) - before
    assert gain >= 2.5, (gain, response.headers["x-model"], response.headers["x-noise-sigma"])
