"""One request's path through a model: pixels -> tiles -> scheduler -> blended pixels (at one scale or several)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from restore.core import multiscale
from restore.core.manifest import ModelSpec
from restore.core.multiscale import ScaledSize
from restore.core.tiling import TiledImage, TilePlan, Tiling, plan_tiles
from restore.core.types import ImageArray
from restore.service.images.codecs import DecodedImage
from restore.service.inference.scheduler import ModelScheduler, Progress, Ticket, TileJob
from restore.service.settings import Settings


@dataclass(frozen=True)
class Restored:
    pixels: npt.NDArray[np.float32]  # height x width x channels, float, nominally [0, 1]
    queue_seconds: float
    infer_seconds: float


def plan_for(spec: ModelSpec, settings: Settings, height: int, width: int, tiling: Tiling = Tiling()) -> TilePlan:
    """The tiling of a ``height x width`` image: the model's ``tiling`` (chosen at load); tile side 0 is RESTORE_TILE_SIZE."""
    return plan_tiles(
        height, width, tile=tiling.tile or settings.tile_size, margin=spec.overlap, feather=spec.feather_for(settings.tile_overlap),
        multiple=spec.multiple, granule=tiling.granule, bucket=tiling.bucket,
    )


async def restore(
    scheduler: ModelScheduler, spec: ModelSpec, settings: Settings, image: DecodedImage,
    *, tiling: Tiling = Tiling(), ticket: Ticket | None = None, progress: Progress | None = None,
    condition: Tile | None = None,
) -> Restored:
    """Run ``image`` through the model on its queue place ``ticket`` (admitted now when None);
    ``progress``, when given, follows its tiles (the job API reports it); ``condition``, a
    conditioned model's one-hot row (the weather route's label), goes with every tile."""
    plan = plan_for(spec, settings, image.height, image.width, tiling)
    if progress is not None:
        progress.total = plan.count
    output, job = await _run_tiles(scheduler, spec, image.color, image.max_value, plan, ticket, progress, condition)
    if image.channels == 1 and spec.channels == 3 and output.shape[2] == 3:
        output = to_gray(output)  # gray in, gray out: the colour model saw three equal channels
    return Restored(output, job.queue_seconds, job.infer_seconds)


async def restore_scales(
    scheduler: ModelScheduler, spec: ModelSpec, settings: Settings, image: DecodedImage, sizes: Sequence[ScaledSize],
    *, tiling: Tiling = Tiling(), tickets: Sequence[Ticket], progress: Progress | None = None,
    condition: Tile | None = None,
) -> Restored:
    """The model's outputs at each of ``sizes`` (one queue place each, from admission), resized back
    to the input's size and averaged (``restore.core.multiscale``; one size of scale 1 is ``restore``).

    Scales run one after another, so one resized copy and its outputs exist at a time; their
    queue places were all taken at admission, so the later ones wait in the queue's order, not
    behind requests that came after. Resizes run off the event loop.
    """
    if len(sizes) == 1 and sizes[0].scale == 1.0:
        return await restore(scheduler, spec, settings, image, tiling=tiling, ticket=tickets[0], progress=progress,
                             condition=condition)
    plans = [plan_for(spec, settings, size.height, size.width, tiling) for size in sizes]
    if progress is not None:
        progress.total = sum(plan.count for plan in plans)
    total: npt.NDArray[np.float32] | None = None
    queue_seconds = infer_seconds = 0.0
    for size, plan, ticket in zip(sizes, plans, tickets):
        pixels = await asyncio.to_thread(multiscale.resize_image, image.color, size.height, size.width)
        output, job = await _run_tiles(scheduler, spec, pixels, image.max_value, plan, ticket, progress, condition)
        del pixels
        total = await asyncio.to_thread(
            lambda out=output, t=total: multiscale.accumulate(t, multiscale.resize_map(out, image.height, image.width))
        )
        del output
        queue_seconds += job.queue_seconds
        infer_seconds += job.infer_seconds
    assert total is not None
    total /= np.float32(len(sizes))
    if image.channels == 1 and spec.channels == 3 and total.shape[2] == 3:
        total = to_gray(total)
    return Restored(total, queue_seconds, infer_seconds)


async def _run_tiles(
    scheduler: ModelScheduler, spec: ModelSpec, pixels: ImageArray, max_value: int, plan: TilePlan,
    ticket: Ticket | None, progress: Progress | None, condition: Tile | None = None,
) -> tuple[npt.NDArray[np.float32], TileJob]:
    """``pixels`` through the model's queue in ``plan``'s tiles: the blended outputs (H x W x outputs)."""
    if spec.channels == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    work = TiledImage(pixels, plan, max_value)
    job = TileJob(plan.count, plan.tile_shape, work.tile, work.accept, progress=progress, condition=condition)
    await scheduler.run(job, ticket)
    assert work.output is not None  # every tile was delivered
    return work.output, job


def to_gray(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """RGB -> luma (ITU-R BT.601 weights, what Pillow's ``convert("L")`` uses), H x W x 1."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray((pixels @ weights)[..., None])
