"""One request's path through a model: pixels -> tiles -> scheduler -> blended pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.codecs import DecodedImage
from service.manifest import ModelSpec
from service.scheduler import ModelScheduler, Progress, Ticket, TileJob
from service.settings import Settings
from service.tiling import TILE_GRANULE, TilePlan, blend_tile, extract_tile, pad_to_plan, plan_tiles
from service.types import ImageArray, Tile


@dataclass(frozen=True)
class Restored:
    pixels: npt.NDArray[np.float32]  # height x width x channels, float, nominally [0, 1]
    queue_seconds: float
    infer_seconds: float


class TiledImage:
    """Per-request state: the padded source and the output accumulator. Never shared between requests."""

    def __init__(self, pixels: ImageArray, plan: TilePlan, max_value: int) -> None:
        self.plan = plan
        self._source = pad_to_plan(pixels, plan)
        self._scale = 1.0 / max_value
        self.output: npt.NDArray[np.float32] | None = None

    def tile(self, index: int) -> Tile:
        return extract_tile(self._source, self.plan, index, self._scale)

    def accept(self, index: int, output: Tile) -> None:
        if self.output is None:
            self.output = np.zeros((self.plan.height, self.plan.width, output.shape[0]), dtype=np.float32)
        blend_tile(self.output, output, self.plan, index)


def plan_for(
    spec: ModelSpec, settings: Settings, height: int, width: int, tile: int | None = None, granule: int = TILE_GRANULE
) -> TilePlan:
    """The tiling of a ``height x width`` image: tiles of side ``tile`` (the model's, chosen at load) or RESTORE_TILE_SIZE."""
    return plan_tiles(
        height, width, tile=tile or settings.tile_size, margin=spec.overlap, feather=settings.tile_overlap,
        multiple=spec.multiple, granule=granule,
    )


async def restore(
    scheduler: ModelScheduler, spec: ModelSpec, settings: Settings, image: DecodedImage,
    *, tile: int | None = None, granule: int = TILE_GRANULE, ticket: Ticket | None = None, progress: Progress | None = None,
) -> Restored:
    """Run ``image`` through the model on its queue place ``ticket`` (admitted now when None);
    ``progress``, when given, follows its tiles (the job API reports it)."""
    pixels = image.color
    if spec.channels == 3 and image.channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    work = TiledImage(pixels, plan_for(spec, settings, image.height, image.width, tile, granule), image.max_value)
    if progress is not None:
        progress.total = work.plan.count
    job = TileJob(work.plan.count, work.plan.tile_shape, work.tile, work.accept, progress=progress)
    await scheduler.run(job, ticket)
    assert work.output is not None  # every tile was delivered
    output = work.output
    if image.channels == 1 and spec.channels == 3 and output.shape[2] == 3:
        output = to_gray(output)  # gray in, gray out: the colour model saw three equal channels
    return Restored(output, job.queue_seconds, job.infer_seconds)


def to_gray(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """RGB -> luma (ITU-R BT.601 weights, what Pillow's ``convert("L")`` uses), H x W x 1."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray((pixels @ weights)[..., None])


def quantize(pixels: npt.NDArray[np.float32], dtype: np.dtype[np.uint8] | np.dtype[np.uint16]) -> ImageArray:
    """[0, 1] floats to integers, clipping and rounding in place to keep peak memory down."""
    max_value = float(np.iinfo(dtype).max)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    pixels *= max_value
    pixels += 0.5
    return pixels.astype(dtype)
