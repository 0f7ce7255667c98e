"""Admission: what a model request must pass before it costs CPU time or much memory.

Each step refuses (413, or 503 with Retry-After) before the next one spends anything:

1. body bytes: the declared Content-Length, or the bytes so far, against the in-flight body
   budget and the client's share of it (``uploads.read_upload``);
2. the header alone (``codecs.probe``): size and channels, so the model is chosen and its tiles
   are planned without decoding a pixel;
3. the model's queue: the estimated seconds of work due before this request (``scheduler.admit``;
   a multi-scale /edges request takes one place per scale, priced together on their resized
   sizes, after ``multiscale.scaled_sizes`` has checked those sizes: 422);
4. decoded pixels in flight (the runtime's pixel budget, and the client's share of it: one client,
   its jobs included, never holds more than ``RESTORE_CLIENT_BUDGET_SHARE`` of it; with several
   scales, the resized copies too);

and only then is the image decoded, after which its body bytes are given back. With
``sigma=auto`` the model is chosen once more after decoding, from the image's estimated noise
(``restore.core.noise_level``): steps 2-3 price the request on the model an unknown level picks,
and if the estimate picks another one the request moves to that model's queue, whose limit is
checked then (so this one 503 can come after decoding). What a request
holds is registered on its exit stack, which ``release_holds`` (a dependency of every model
route) closes once the response is sent, whatever happened in between; a job
(``restore.service.api.jobs``) takes the stack over at its 202 and closes it when the job ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from starlette.requests import Request

from restore.core import multiscale
from restore.core.multiscale import ScaledSize
from restore.core.noise_level import NoiseEstimate, estimate_noise, pick_model, pick_sigma
from restore.core.types import Task
from restore.service.errors import BadRequest
from restore.service.images import codecs
from restore.service.inference.pipeline import plan_for
from restore.service.inference.runtime import ModelState, Runtime
from restore.service.inference.scheduler import Ticket
from restore.service.limits.budget import InFlight
from restore.service.limits.clients import client_of
from restore.service.limits.uploads import read_upload
from restore.service.types import Sigma


@dataclass(frozen=True)
class Admitted:
    image: codecs.DecodedImage
    state: ModelState
    tickets: tuple[Ticket, ...]  # the request's places in the model's queue, one per size
    sizes: tuple[ScaledSize, ...]  # what the model sees: the image itself, or its scales (/edges?scales=)
    decode_seconds: float
    noise: NoiseEstimate | None = None  # sigma=auto only: what was measured
    estimate_seconds: float = 0.0


async def release_holds(request: Request) -> AsyncIterator[None]:
    """Dependency of every model route: budgets and queue places taken while serving it are given
    back after the response is sent (or the request fails), and a large request's freed memory
    goes back to the system."""
    async with AsyncExitStack() as stack:
        request.state.holds = stack
        yield


async def admit(
    request: Request, runtime: Runtime, *, task: Task, sigma: Sigma, scales: tuple[float, ...] = multiscale.SINGLE,
    model: str | None = None,
) -> Admitted:
    """Read, price and decode the request's image, refusing as early as possible."""
    settings = runtime.settings
    holds: AsyncExitStack = request.state.holds
    in_flight: InFlight = request.app.state.in_flight
    client = client_of(request)
    body = holds.enter_context(in_flight.bodies.hold(client=client))
    data = await read_upload(request, settings.max_body_bytes, body)
    header = await asyncio.to_thread(codecs.probe, data, settings.max_pixels)  # chunks before the pixels may be large
    level = sigma
    if isinstance(level, str):  # "auto": priced on the model an unknown level picks, chosen again once decoded
        level = pick_sigma(NoiseEstimate(None), _ready_sigmas(runtime, task, header.channels))
    state = runtime.select(task, channels=header.channels, sigma=level, name=model)
    assert state.scheduler is not None
    try:
        sizes = multiscale.scaled_sizes(scales, header.height, header.width, settings.max_pixels)
    except multiscale.InvalidScales as exc:
        raise BadRequest(str(exc)) from exc
    works = [plan_for(state.spec, settings, s.height, s.width, state.tiling).work for s in sizes]
    tickets = holds.enter_context(state.scheduler.reserve_parts(works))
    holds.enter_context(in_flight.pixels.hold(header.pixels + sum(s.pixels for s in sizes if s.scale != 1.0), client))
    started = time.perf_counter()
    image = await asyncio.to_thread(codecs.decode, data, settings.max_pixels)
    del data
    body.release()
    admitted = Admitted(image, state, tickets, sizes, time.perf_counter() - started)
    return await _by_noise_level(runtime, holds, task, admitted) if sigma == "auto" else admitted


def _ready_sigmas(runtime: Runtime, task: Task, channels: int) -> list[float | None]:
    return [s.spec.sigma for s in runtime.candidates(task, channels=channels) if s.status == "ready"]


def _auto_choice(runtime: Runtime, task: Task, channels: int, estimate: NoiseEstimate) -> ModelState:
    """``sigma=auto``'s model for an estimate: ``pick_model`` among the ready candidates (a camera
    model never takes white noise, whatever the manifest's order)."""
    ready = [s for s in runtime.candidates(task, channels=channels) if s.status == "ready"]
    if not ready:  # nothing ready: select says why
        return runtime.select(task, channels=channels)
    chosen = ready[pick_model(estimate, [(s.spec.sigma, s.spec.noise) for s in ready])]
    return runtime.select(task, channels=channels, name=chosen.spec.name)


async def _by_noise_level(runtime: Runtime, holds: AsyncExitStack, task: Task, admitted: Admitted) -> Admitted:
    """``sigma=auto``: estimate the image's noise level and move to the model it picks."""
    image, state, (ticket,) = admitted.image, admitted.state, admitted.tickets  # denoise: one size
    started = time.perf_counter()
    estimate = await asyncio.to_thread(estimate_noise, image.color, image.max_value)
    seconds = time.perf_counter() - started
    chosen = _auto_choice(runtime, task, image.channels, estimate)
    if chosen is not state:
        assert chosen.scheduler is not None and state.scheduler is not None
        plan = plan_for(chosen.spec, runtime.settings, image.height, image.width, chosen.tiling)
        new_ticket = holds.enter_context(chosen.scheduler.reserve(plan.work))
        state.scheduler.release(ticket)  # idempotent: the exit stack's release later does nothing
        state, ticket = chosen, new_ticket
    return dataclasses.replace(admitted, state=state, tickets=(ticket,), noise=estimate, estimate_seconds=seconds)
