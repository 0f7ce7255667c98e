"""One model request's path, shared by every image route and the job routes: ``prepare`` (read,
admit, decode, settle the format) -> ``run_model`` (tiles through the queue) -> ``encode_run`` ->
``respond``; an ``Operation`` is what the request asked for, settled before its body is read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from fastapi import Request, Response

from restore.core import multiscale
from restore.core.pixels import to_pixels
from restore.core.types import Task
from restore.service.api.deps import runtime_of
from restore.service.images import codecs
from restore.service.images.negotiation import MEDIA_TYPES, choose_format
from restore.service.inference.pipeline import plan_for, restore_scales
from restore.service.inference.runtime import ModelState
from restore.service.inference.scheduler import Progress
from restore.service.limits.admission import Admitted, admit
from restore.service.metrics import Metrics
from restore.service.settings import Settings
from restore.service.types import OutputFormat, Sigma

#: Chooses the output format once the image is decoded, before inference (see negotiation.choose_format).
OutputChooser = Callable[[codecs.DecodedImage], OutputFormat]
#: /denoise?sigma=auto: the estimated noise level, per channel on the 0-255 scale ("unknown" for tiny images).
NOISE_SIGMA_HEADER = "X-Noise-Sigma"
#: Where the job routes live (src/restore/service/api/jobs.py): POST {JOBS_PREFIX}{operation}, GET {JOBS_PREFIX}{id}.
JOBS_PREFIX = "/v1/jobs/"



class ClientDisconnected(Exception):
    """The client went away; its tiles were dropped and nothing is sent."""


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
    (``restore.service.api.jobs``) then run the same ``prepare`` -> ``run_model`` -> ``encode_run``, so the
    two cannot drift apart in what they accept or what they return.
    """

    task: Task
    choose_output: OutputChooser  # the output format, once the image is decoded (before inference)
    encode: Callable[[ModelRun], bytes]  # model output -> file bytes, run off the event loop
    sigma: Sigma = None
    scales: tuple[float, ...] = multiscale.SINGLE  # /edges?scales=: the model at each, maps averaged
    model: str | None = None  # /denoise?model=: a loaded model by name, instead of choosing by sigma
    weather: str | None = None  # the weather routes: the label the conditioned model is given ("unknown": blind)


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
    spec = state.spec
    condition = spec.condition(prepared.operation.weather or "unknown") if spec.weather_labels else None
    restored = await restore_scales(
        state.scheduler, spec, settings, admitted.image, admitted.sizes,
        tiling=state.tiling, tickets=admitted.tickets, progress=progress, condition=condition,
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
        **({"X-Weather": operation.weather or "unknown"} if run.state.spec.weather_labels else {}),
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
        pixels = to_pixels(run.output, image.color.dtype, overwrite=True)
        return codecs.encode(
            pixels, image.alpha, image.icc_profile, run.fmt, exif=image.exif if settings.keep_metadata else None,
            jpeg_quality=settings.jpeg_quality, webp_quality=settings.webp_quality,
            png_compress_level=settings.png_compress_level,
        )

    return Operation(task, choose_output, encode, sigma)
