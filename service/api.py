"""Model endpoints. Each one: read upload -> admit (header, model, queue, budgets) -> decode -> tile/schedule -> encode."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt

from fastapi import APIRouter, Depends, Query, Request, Response

from service import codecs
from service.admission import admit, release_holds
from service.errors import PROBLEM_JSON, ServiceError, Unauthorized
from service.negotiation import MEDIA_TYPES, choose_format, parse_format
from service.pipeline import quantize, restore
from service.runtime import ModelState, Runtime
from service.settings import Settings
from service.types import OutputFormat, Task

IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image: multipart/form-data with a file field `image`, or the raw bytes with an image content type.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "binary"}}}
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "image/tiff": {"schema": {"type": "string", "format": "binary"}},
            "image/bmp": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_PROBLEM = {"content": {PROBLEM_JSON: {"schema": {"type": "object"}}}}
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The restored image", "content": {t: {} for t in MEDIA_TYPES.values()}},
    401: {"description": "Missing or wrong API key", **_PROBLEM},
    406: {"description": "No acceptable output format", **_PROBLEM},
    413: {"description": "Body or pixel count over the limit", **_PROBLEM},
    415: {"description": "Not an image format we read", **_PROBLEM},
    422: {"description": "Corrupt image or bad parameter", **_PROBLEM},
    503: {"description": "Queue full (see Retry-After) or model not ready", **_PROBLEM},
}

FormatQuery = Annotated[
    str | None,
    Query(description="Output format, overriding Accept: png, jpeg, webp or tiff. Default: the input's format (BMP -> PNG)."),
]


class ClientDisconnected(Exception):
    """The client went away; its tiles were dropped and nothing is sent."""


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def require_api_key(request: Request) -> None:
    keys = runtime_of(request).settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), key) for key in keys):
        raise Unauthorized("send Authorization: Bearer <api key>", headers={"WWW-Authenticate": "Bearer"})


class StageTimer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.stages.items())


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass
class ModelRun:
    image: codecs.DecodedImage
    state: ModelState
    output: npt.NDArray[np.float32]  # height x width x model output channels
    timer: StageTimer


async def run_model(request: Request, *, task: Task, sigma: float | None = None) -> ModelRun:
    """Read, admit, decode, and run the model tiled; cancelled (tiles dropped) if the client leaves."""
    runtime = runtime_of(request)
    settings: Settings = runtime.settings
    timer = StageTimer()
    admitted = await admit(request, runtime, task=task, sigma=sigma)  # refuses before decoding (admission.py)
    image, state = admitted.image, admitted.state
    timer.add("decode", admitted.decode_seconds)
    assert state.scheduler is not None

    work = asyncio.ensure_future(
        restore(state.scheduler, state.spec, settings, image, tile=state.tile, granule=state.granule, ticket=admitted.ticket)
    )
    watcher = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientDisconnected()
    watcher.cancel()
    restored = work.result()
    timer.add("queue", restored.queue_seconds)
    timer.add("infer", restored.infer_seconds)
    return ModelRun(image, state, restored.pixels, timer)


async def encoded_response(request: Request, run: ModelRun, fmt: OutputFormat, encode: Callable[[], bytes]) -> Response:
    """Encode off the event loop and attach the timing and model headers."""
    started = time.perf_counter()
    body = await asyncio.to_thread(encode)
    run.timer.add("encode", time.perf_counter() - started)
    metrics = runtime_of(request).metrics
    for stage, seconds in run.timer.stages.items():
        metrics.stage.labels(request.url.path, stage).observe(seconds)
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Server-Timing": run.timer.header(),
            "X-Model": run.state.spec.name,
            "X-Model-Version": run.state.spec.version,
        },
    )


async def serve_image(request: Request, *, task: Task, sigma: float | None, fmt_query: str | None) -> Response:
    """Image in, restored image out: same size, bit depth, alpha and ICC profile as the input."""
    if fmt_query:
        parse_format(fmt_query)  # a bad ?format= is refused before any work
    run = await run_model(request, task=task, sigma=sigma)
    fmt = choose_format(fmt_query, request.headers.get("accept"), run.image.source_format)
    settings = runtime_of(request).settings
    image = run.image

    def encode() -> bytes:
        pixels = quantize(run.output, image.color.dtype)
        return codecs.encode(
            pixels, image.alpha, image.icc_profile, fmt,
            jpeg_quality=settings.jpeg_quality, webp_quality=settings.webp_quality,
            png_compress_level=settings.png_compress_level,
        )

    return await encoded_response(request, run, fmt, encode)


#: Every model route: the API key first; what a request holds (queue place, in-flight budgets) is
#: given back once it is answered.
MODEL_DEPENDENCIES = [Depends(require_api_key), Depends(release_holds)]
router = APIRouter(dependencies=MODEL_DEPENDENCIES)


@router.post(
    "/denoise",
    summary="Remove Gaussian noise (DnCNN)",
    response_class=Response,
    responses=IMAGE_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def denoise(
    request: Request,
    sigma: Annotated[
        float | None,
        Query(
            description=(
                "Noise level on the 0-255 scale. 15, 25 or 50 select the model trained for exactly that level; "
                "omit it to use the blind model (trained for 0-55), which is the right choice when the level is "
                "unknown. Any other value is refused with 422 and the list of levels on offer."
            ),
            examples=[25],
        ),
    ] = None,
    format: FormatQuery = None,
) -> Response:
    """Gray images use the gray models, colour images the colour ones; alpha, ICC profile and 16-bit depth pass through."""
    return await serve_image(request, task="denoise", sigma=sigma, fmt_query=format)


__all__ = ["ClientDisconnected", "ServiceError", "router", "serve_image"]
