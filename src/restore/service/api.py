"""Model endpoints. Each one: read upload -> admit (header, model, queue, budgets) -> decode -> tile/schedule -> encode."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from restore.core import multiscale
from restore.core.noise_level import AUTO_RULE
from restore.core.types import Task
from restore.service import codecs
from restore.service.admission import Admitted, admit, release_holds
from restore.service.errors import BadRequest, ServiceError, Unauthorized
from restore.service.metrics import Metrics
from restore.service.negotiation import MEDIA_TYPES, choose_format
from restore.service.openapi import IMAGE_BODY, IMAGE_RESPONSES
from restore.service.pipeline import plan_for, quantize, restore_scales
from restore.service.runtime import ModelState, Runtime
from restore.service.scheduler import Progress
from restore.service.settings import Settings
from restore.service.types import OutputFormat, Sigma

#: Output formats as ?format= takes them: our names, the usual aliases, and both in upper case.
FormatName = Literal["png", "jpeg", "jpg", "webp", "tiff", "tif", "PNG", "JPEG", "JPG", "WEBP", "TIFF", "TIF"]
FormatQuery = Annotated[
    FormatName | None,
    Query(description="Output format, overriding Accept: png, jpeg, webp or tiff. Default: the input's format (BMP -> PNG)."),
]
#: Chooses the output format once the image is decoded, before inference (see negotiation.choose_format).
OutputChooser = Callable[[codecs.DecodedImage], OutputFormat]
#: /denoise?sigma=auto: the estimated noise level, per channel on the 0-255 scale ("unknown" for tiny images).
NOISE_SIGMA_HEADER = "X-Noise-Sigma"
#: Where the job routes live (src/restore/service/api_jobs.py): POST {JOBS_PREFIX}{operation}, GET {JOBS_PREFIX}{id}.
JOBS_PREFIX = "/v1/jobs/"


class ClientDisconnected(Exception):
    """The client went away; its tiles were dropped and nothing is sent."""


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def require_api_key(request: Request) -> None:
    """Compared as bytes: hmac.compare_digest refuses non-ASCII str, and a header is bytes on the wire
    (Starlette decodes it as latin-1, so encoding back gives exactly what the client sent)."""
    api_key_owner(request)


def api_key_owner(request: Request) -> str | None:
    """Who sent the request: a digest of its valid API key (a job is visible only to the key that
    created it), None when no keys are configured; 401 without a valid key."""
    keys = runtime_of(request).settings.api_keys
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    sent = token.strip().encode("latin-1")
    if scheme.lower() == "bearer":
        for key in keys:
            encoded = key.encode("utf-8", "surrogateescape")
            if hmac.compare_digest(sent, encoded):
                return hashlib.sha256(encoded).hexdigest()
    raise Unauthorized("send Authorization: Bearer <api key>", headers={"WWW-Authenticate": "Bearer"})


def reject_stray_query(request: Request) -> None:
    """422 for a query parameter the route does not take, or one given twice: silently ignoring
    ``sigmaa=25`` or keeping the last of ``sigma=25&sigma=50`` would serve what the client did not ask for."""
    route = request.scope.get("route")
    taken = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    counts = Counter(name for name, _ in request.query_params.multi_items())
    for name, count in counts.items():
        if name not in taken:
            offered = ", ".join(sorted(taken)) or "no query parameters"
            raise BadRequest(f"unknown query parameter {name!r}: {request.url.path} takes {offered}")
        if count > 1:
            raise BadRequest(f"query parameter {name!r} is given {count} times; give it once")


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included (an Operation's parameters live there)."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


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
    fmt: OutputFormat
    headers: dict[str, str] = field(default_factory=dict)  # sent with the response (X-Noise-Sigma)


@dataclass(frozen=True)
class Operation:
    """What one model request asks for, settled from its parameters before its body is read.

    A route's dependency builds it; the synchronous route (``respond``) and the job route
    (``restore.service.api_jobs``) then run the same ``prepare`` -> ``run_model`` -> ``encode_run``, so the
    two cannot drift apart in what they accept or what they return.
    """

    task: Task
    choose_output: OutputChooser  # the output format, once the image is decoded (before inference)
    encode: Callable[[ModelRun], bytes]  # model output -> file bytes, run off the event loop
    sigma: Sigma = None
    scales: tuple[float, ...] = multiscale.SINGLE  # /edges?scales=: the model at each, maps averaged
    model: str | None = None  # /denoise?model=: a loaded model by name, instead of choosing by sigma


@dataclass
class Prepared:
    """An admitted request: decoded, priced, holding its queue place and budgets, format settled."""

    admitted: Admitted
    operation: Operation
    fmt: OutputFormat
    timer: StageTimer
    headers: dict[str, str]

    def tile_count(self, settings: Settings) -> int:
        state = self.admitted.state
        return sum(plan_for(state.spec, settings, s.height, s.width, state.tiling).count for s in self.admitted.sizes)


@dataclass(frozen=True)
class Encoded:
    """The answer to a model request: file bytes and the headers that describe them."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def image_accept(request: Request) -> str | None:
    """The Accept header that picks the output format: a job's POST answers JSON (202), so there
    only ``?format=`` and the input's format count."""
    return None if request.url.path.startswith(JOBS_PREFIX) else request.headers.get("accept")


async def prepare(request: Request, operation: Operation) -> Prepared:
    """Every refusal a model request can meet before inference: read, admit (body, header, queue,
    budgets), decode, and settle the output format. What it holds is on ``request.state.holds``."""
    runtime = runtime_of(request)
    timer = StageTimer()
    admitted = await admit(
        request, runtime, task=operation.task, sigma=operation.sigma, scales=operation.scales, model=operation.model
    )  # admission.py
    timer.add("decode", admitted.decode_seconds)
    headers: dict[str, str] = {}
    if admitted.noise is not None:  # sigma=auto
        timer.add("estimate", admitted.estimate_seconds)
        headers[NOISE_SIGMA_HEADER] = "unknown" if admitted.noise.sigma is None else f"{admitted.noise.sigma:.1f}"
    return Prepared(admitted, operation, operation.choose_output(admitted.image), timer, headers)


async def run_model(prepared: Prepared, settings: Settings, progress: Progress | None = None) -> ModelRun:
    """Run the admitted image through its model, tiled, on the queue place admission took."""
    admitted = prepared.admitted
    state = admitted.state
    assert state.scheduler is not None
    restored = await restore_scales(
        state.scheduler, state.spec, settings, admitted.image, admitted.sizes,
        tiling=state.tiling, tickets=admitted.tickets, progress=progress,
    )
    prepared.timer.add("queue", restored.queue_seconds)
    prepared.timer.add("infer", restored.infer_seconds)
    return ModelRun(admitted.image, state, restored.pixels, prepared.timer, prepared.fmt, prepared.headers)


async def encode_run(run: ModelRun, operation: Operation) -> Encoded:
    """Encode off the event loop and attach the timing and model headers."""
    started = time.perf_counter()
    body = await asyncio.to_thread(operation.encode, run)
    run.timer.add("encode", time.perf_counter() - started)
    headers = {
        "Server-Timing": run.timer.header(),
        "X-Model": run.state.spec.name,
        "X-Model-Version": run.state.spec.version,
        **run.headers,
    }
    return Encoded(body, MEDIA_TYPES[run.fmt], headers)


def observe_stages(metrics: Metrics, endpoint: str, timer: StageTimer) -> None:
    for stage, seconds in timer.stages.items():
        metrics.stage.labels(endpoint, stage).observe(seconds)


async def respond(request: Request, operation: Operation) -> Response:
    """The synchronous route: the restored image in the response; cancelled (tiles dropped) if the
    client leaves while it waits. Every refusal comes before inference, so no work is thrown away."""
    settings = runtime_of(request).settings
    prepared = await prepare(request, operation)
    work = asyncio.ensure_future(run_model(prepared, settings))
    watcher = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientDisconnected()
    watcher.cancel()
    encoded = await encode_run(work.result(), operation)
    observe_stages(runtime_of(request).metrics, request.url.path, prepared.timer)
    return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)


def image_operation(request: Request, *, task: Task, sigma: Sigma, fmt_query: str | None) -> Operation:
    """Image in, restored image out: same size, bit depth, alpha, ICC profile and EXIF as the input."""
    accept = image_accept(request)
    choose_format(fmt_query, accept, "png")  # a bad ?format= (422) or Accept (406) is refused before the body is read
    settings = runtime_of(request).settings

    def choose_output(image: codecs.DecodedImage) -> OutputFormat:
        channels, bits = image.channels + (image.alpha is not None), image.color.dtype.itemsize * 8
        return choose_format(
            fmt_query, accept, image.source_format,
            unfit=lambda fmt: codecs.encode_limit(fmt, image.width, image.height, channels=channels, bits=bits),
        )

    def encode(run: ModelRun) -> bytes:
        image = run.image
        pixels = quantize(run.output, image.color.dtype)
        return codecs.encode(
            pixels, image.alpha, image.icc_profile, run.fmt, exif=image.exif if settings.keep_metadata else None,
            jpeg_quality=settings.jpeg_quality, webp_quality=settings.webp_quality,
            png_compress_level=settings.png_compress_level,
        )

    return Operation(task, choose_output, encode, sigma)


#: Every model route: the API key first, then its query parameters; what a request holds (queue
#: place, in-flight budgets) is given back once it is answered.
MODEL_DEPENDENCIES = [Depends(require_api_key), Depends(reject_stray_query), Depends(release_holds)]
router = APIRouter(dependencies=MODEL_DEPENDENCIES)


#: /denoise's responses: the image routes' own, and X-Noise-Sigma on a 200.
DENOISE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **IMAGE_RESPONSES,
    200: {
        **IMAGE_RESPONSES[200],
        "headers": {
            NOISE_SIGMA_HEADER: {
                "description": "Unless sigma or model is given: the estimated noise level (per channel, 0-255 scale, one decimal) "
                "that picked the model named in X-Model, or `unknown` for an image under about 20x20 pixels",
                "schema": {"type": "string", "examples": ["23.7", "unknown"]},
            }
        },
    },
}


async def denoise_operation(
    request: Request,
    sigma: Annotated[
        float | Literal["auto", "blind"] | None,
        Query(
            description=(
                "Noise level on the 0-255 scale. Omitted or `auto` (the default): estimate the noise of each image "
                "(Liu et al. 2013 patch selection, Chen et al. 2015 eigenvalue rule, on the luma and on the chroma), "
                "return the level in X-Noise-Sigma and pick the model: " + AUTO_RULE + " 15, 25 or 50: the model "
                "trained for exactly that level (any other number is refused with 422 and the list of levels on "
                "offer). `blind`: the blind model (trained on Gaussian noise of 0-55), right for noise that is white "
                "in R, G and B at any level, but it leaves most of the noise in JPEG photos with 4:2:0 chroma, the "
                "usual camera and phone file (CBSD68, sigma 25, quality 90: +0.8 dB, against +5.5 dB with sigma=25)."
            ),
            openapi_examples={
                "auto": {"summary": "estimate the level of each image and pick the model from it (the default)", "value": "auto"},
                "level": {"summary": "the model trained for sigma 25", "value": 25},
                "blind": {"summary": "the blind model, whatever the image", "value": "blind"},
            },
        ),
    ] = None,
    model: Annotated[
        str | None,
        Query(
            description=(
                "A loaded denoise model by name (GET /v1/models lists them), instead of choosing by sigma: for "
                "example the paper's blind CDnCNN-B, `dncnn-color-blind`, for noise known to be white Gaussian. "
                "Not together with sigma; a name that is not loaded, or a gray model for a colour image, is refused with 422."
            ),
            min_length=1,
            max_length=128,
            openapi_examples={"paper": {"summary": "the paper's blind colour model", "value": "dncnn-color-blind"}},
        ),
    ] = None,
    format: FormatQuery = None,
) -> Operation:
    """/denoise's parameters (shared by POST /denoise and POST /v1/jobs/denoise)."""
    if model is not None and sigma is not None:
        raise BadRequest("give sigma or model, not both: model names one model, sigma lets the service choose")
    return dataclasses.replace(image_operation(request, task="denoise", sigma=denoise_level(sigma, model), fmt_query=format), model=model)


def denoise_level(sigma: float | Literal["auto", "blind"] | None, model: str | None) -> Sigma:
    """What the runtime selects by: ``auto`` unless the request names a level, the blind model
    (``None``) or a model. Estimating is the default because it is what works on camera and phone
    JPEGs, where the blind model leaves the noise in (CBSD68 with sigma 15 then JPEG q75 4:2:0: +0.08 dB,
    against +3.24 dB estimated, docs/dncnn.md); on white noise the estimate keeps the blind model anyway."""
    if model is not None:
        return None
    if sigma is None:
        return "auto"
    return None if sigma == "blind" else sigma


@router.post(
    "/denoise",
    summary="Remove noise (DnCNN)",
    response_class=Response,
    responses=DENOISE_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def denoise(request: Request, operation: Annotated[Operation, Depends(denoise_operation)]) -> Response:
    """Gray images use the gray models, colour images the colour ones; alpha, ICC profile and 16-bit depth pass through."""
    return await respond(request, operation)


__all__ = ["ClientDisconnected", "Operation", "ServiceError", "denoise_operation", "image_operation", "respond", "router"]
