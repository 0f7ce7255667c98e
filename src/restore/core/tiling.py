"""Cut an image into same-shaped overlapping tiles and blend model outputs back without seams.

Pure functions over numpy arrays; no state is kept between requests.

Why this is exact: a convolutional network whose receptive-field radius is ``margin`` computes the
same value for a pixel whether it sees the whole image or a tile, as long as the pixel is at least
``margin`` pixels from every tile edge that is not also an image edge. Each tile's blending weight is
zero inside that contaminated band and rises linearly over ``feather`` pixels after it, so every
output pixel is a convex combination of values that each equal the whole-image result. Neighbouring
tiles overlap by ``2 * margin + feather`` so the weights never all vanish.

Weights are separable and normalised per axis, so the sum over tiles is one at every pixel and no
full-size weight buffer is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from restore.core.types import ImageArray, Tile, Weights1D, Weights2D

#: The tile side when nothing else is asked for (the service's RESTORE_TILE_SIZE default): it bounds
#: one batch's memory, and at 1024 px the overlap a DnCNN or HED tile recomputes stays under 10%.
DEFAULT_TILE = 1024
#: The cross-fade width between neighbouring tiles, on top of twice the model's margin (RESTORE_TILE_OVERLAP).
DEFAULT_FEATHER = 16
#: Tile sides are rounded up to a multiple of this, so the shapes in use stay few and requests of
#: similar sizes can share a batch (``max_batch > 1``, on a GPU).
TILE_GRANULE = 64
#: The grid when every batch is one tile (CPU): shapes need not match, so a tile is shrunk closer
#: to what its image needs (a 512 px image in 256 px tiles: 1.49x the pixels instead of 2.25x).
FINE_GRANULE = 16
#: The smallest tile side a time budget may choose, in overlaps: at 4x the overlap, recomputing the
#: borders costs at most (4/3)^2 - 1 = 78% extra work; smaller tiles waste more than they save.
MIN_TILE_OVERLAPS = 4


@dataclass(frozen=True)
class AxisPlan:
    length: int  # padded length along this axis
    size: int  # tile length along this axis
    starts: tuple[int, ...]
    weights: tuple[Weights1D, ...]  # normalised: sum over tiles is 1 at every position


@dataclass(frozen=True)
class TilePlan:
    height: int  # original image size
    width: int
    rows: AxisPlan
    cols: AxisPlan

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.size, self.cols.size

    @property
    def count(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    @property
    def work(self) -> int:
        """Pixels the model computes for this image, overlap included: the cost admission estimates."""
        return self.count * self.rows.size * self.cols.size

    def origin(self, index: int) -> tuple[int, int]:
        r, c = divmod(index, len(self.cols.starts))
        return self.rows.starts[r], self.cols.starts[c]

    def weight(self, index: int) -> Weights2D:
        r, c = divmod(index, len(self.cols.starts))
        return np.outer(self.rows.weights[r], self.cols.weights[c])



@dataclass(frozen=True)
class Tiling:
    """How one model's images are cut, chosen once per model at load (``restore.service.inference.runtime``) and
    used by every plan of its images: the tile side (0: RESTORE_TILE_SIZE), the grid tiles shrink
    on, and the grid small images are padded up to when batches mix requests (0: none)."""

    tile: int = 0
    granule: int = TILE_GRANULE
    bucket: int = 0


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_side_for(
    pixels_per_s: float, seconds: float, *, overlap: int, multiple: int, largest: int, smallest: int = 0
) -> int:
    """The tile side one model run of about ``seconds`` covers at ``pixels_per_s``.

    A long batch is what a newly arrived request waits for, so on a slow device tiles are sized by
    time rather than memory; ``seconds <= 0`` turns this off (always ``largest``). The side lies on
    the tile grid, never below MIN_TILE_OVERLAPS overlaps (work) nor below ``smallest`` (the model's
    ``min_tile``: smaller tiles change its output), and never above ``largest`` (memory, the
    operator's cap, which wins). A cap no larger than the overlap leaves a tile nothing of its own:
    a ValueError, which fails that model's load with the reason, rather than every request later.
    """
    if largest <= overlap:
        raise ValueError(f"RESTORE_TILE_SIZE {largest} must exceed this model's tile overlap {overlap} "
                         "(2 x its margin + the cross-fade)")
    budget = max(pixels_per_s, 0.0) * seconds
    if seconds <= 0 or budget >= largest * largest:
        return largest
    grid = math.lcm(TILE_GRANULE, multiple)
    side = int(math.sqrt(budget)) // grid * grid
    floor = max(round_up(MIN_TILE_OVERLAPS * overlap, grid), round_up(smallest, grid))
    return min(largest, max(side, floor))


def _axis_starts(length: int, size: int, overlap: int, multiple: int) -> list[int]:
    if length <= size:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    span = length - size
    starts = [round(i * span / (count - 1) / multiple) * multiple for i in range(count)]
    return sorted(set(starts))


def _axis_weights(length: int, size: int, starts: list[int], margin: int, feather: int) -> list[Weights1D]:
    position = np.arange(size, dtype=np.float64)
    raw = []
    for start in starts:
        left = position if start > 0 else np.full(size, np.inf)
        right = size - 1 - position if start + size < length else np.full(size, np.inf)
        distance = np.minimum(left, right)
        raw.append(np.clip((distance - margin + 1) / (feather + 1), 0.0, 1.0))
    total = np.zeros(length)
    for start, w in zip(starts, raw):
        total[start : start + size] += w
    if np.any(total <= 0):
        raise ValueError("tile overlap too small for the model's receptive-field margin")
    return [(w / total[s : s + size]).astype(np.float32) for s, w in zip(starts, raw)]


def plan_axis(
    length: int, tile: int, margin: int, feather: int, multiple: int, granule: int = TILE_GRANULE, bucket: int = 0
) -> AxisPlan:
    padded = round_up(length, multiple)
    full = max(multiple, tile // multiple * multiple)
    if bucket and padded < full:  # a small image is padded up to a shared shape (see plan_tiles)
        padded = min(full, round_up(padded, math.lcm(bucket, multiple)))
    size = min(padded, full)
    overlap = 2 * margin + feather
    if padded > size:
        if size <= overlap:
            raise ValueError(f"tile size {size} must exceed the overlap {overlap} (2 x margin + feather)")
        # As few tiles as the full size needs, each shrunk to what that count needs (on a coarse
        # grid so requests of similar sizes still share a shape and can be batched together).
        count = math.ceil((padded - overlap) / (size - overlap))
        needed = math.ceil((padded + (count - 1) * overlap) / count)
        size = min(size, round_up(needed, math.lcm(granule, multiple)))
    starts = _axis_starts(padded, size, overlap, multiple)
    return AxisPlan(padded, size, tuple(starts), tuple(_axis_weights(padded, size, starts, margin, feather)))


def plan_tiles(
    height: int, width: int, *, tile: int, margin: int, feather: int, multiple: int = 1, granule: int = TILE_GRANULE,
    bucket: int = 0,
) -> TilePlan:
    """Tile ``height x width``: every tile of the image has the same shape, at most ``tile`` per axis.

    Border tiles are shifted inward rather than padded, so an image at least one tile large is
    never padded; an image smaller than a tile is processed whole, at its own size. A larger
    image gets the fewest tiles of side ``tile`` that cover it, then the side is shrunk (to a
    multiple of ``granule``) as far as that count allows, which keeps the work spent on
    overlap small: 2048 px at tile 1024 takes three 768 px tiles, not three 1024 px ones. Only the size
    multiple a model needs (e.g. 16 for a 4-level U-Net) is reached by reflect padding.

    ``bucket`` > 0 (batches that mix requests): a side shorter than the tile is reflect-padded up
    to a multiple of ``bucket`` (at most the tile) and the output cropped, so images of different
    small sizes share a few shapes and fill batches together (16 sizes below 256 px fall into at
    most 4 x 4 shapes on a 64 px grid instead of 16). The price: padded pixels are computed too, and
    within the model's receptive-field margin of the padded bottom and right edges the output is
    the model's answer on the reflected image, not on its zero-padded border (a few levels of 255
    near the edge, measured in docs/benchmarks.md); 0 keeps every small image at its own size,
    identical to whole-image inference.
    """
    if height < 1 or width < 1:
        raise ValueError("empty image")
    return TilePlan(
        height,
        width,
        plan_axis(height, tile, margin, feather, multiple, granule, bucket),
        plan_axis(width, tile, margin, feather, multiple, granule, bucket),
    )


def pad_to_plan(image: ImageArray, plan: TilePlan) -> ImageArray:
    """Reflect-pad (bottom/right) to the multiple the model needs; a no-op for multiple 1."""
    pad_h, pad_w = plan.rows.length - plan.height, plan.cols.length - plan.width
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if plan.height > pad_h and plan.width > pad_w else "symmetric"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def extract_tile(image: ImageArray, plan: TilePlan, index: int, scale: float) -> Tile:
    """The model input for tile ``index``: CHW float32 in [0, 1] (``scale`` is 1/255 or 1/65535)."""
    top, left = plan.origin(index)
    h, w = plan.tile_shape
    region = image[top : top + h, left : left + w, :]
    return np.ascontiguousarray(region.transpose(2, 0, 1), dtype=np.float32) * np.float32(scale)


def blend_tile(accumulator: npt.NDArray[np.float32], output: Tile, plan: TilePlan, index: int) -> None:
    """Add one model output (CHW) into the HWC float32 accumulator, cropped to the original size."""
    top, left = plan.origin(index)
    h = min(plan.tile_shape[0], plan.height - top)
    w = min(plan.tile_shape[1], plan.width - left)
    if h <= 0 or w <= 0:
        return
    weight = plan.weight(index)[:h, :w, None]
    accumulator[top : top + h, left : left + w, :] += output[:, :h, :w].transpose(1, 2, 0) * weight


class TiledImage:
    """One image's tiling state: the padded source and the output accumulator. It belongs to one
    request (or one evaluation image) and is never shared.

    ``tile(i)`` is the model input of tile ``i`` and ``accept(i, out)`` blends its output in; when
    every tile has been accepted, ``output`` is the whole-image result (H x W x output channels).
    """

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


def run_tiled(forward: Callable[[Tile], Tile], pixels: ImageArray, plan: TilePlan, max_value: int = 255) -> npt.NDArray[np.float32]:
    """``pixels`` through ``forward`` (one CHW tile in, its CHW output out) tile by tile in ``plan``,
    blended back: what the service computes for one image, without its queue (evaluations, export checks)."""
    work = TiledImage(pixels, plan, max_value)
    for index in range(plan.count):
        work.accept(index, forward(work.tile(index)))
    assert work.output is not None  # a plan has at least one tile
    return work.output
