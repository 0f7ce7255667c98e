"""Multi-scale edge inference: run the model on resized copies of the input, average the maps at its size.

Why: an edge detector's receptive fields see edges at the scales it was trained on; the same
network on a half-size copy finds the coarse boundaries and on a 1.5x copy the fine ones, and the
average of the maps is the standard cheap test-time gain of HED-family detectors (RCF, Liu et
al. CVPR 2017, and BDCN, He et al. CVPR 2019, report single- and multi-scale; both use 0.5, 1,
1.5). Each scale is an ordinary tiled request on the model's queue (``pipeline.restore_scales``),
so what the tiler guarantees at scale 1 (identical to whole-image inference) holds at every scale.

Cost: the model computes ``sum(s^2)`` times the input's pixels: 3.5x for 0.5, 1, 1.5 (0.25 + 1 +
2.25), before tiling overlap; plus two bilinear resizes per scale other than 1.

This module owns every rule about ``?scales=`` (``parse_scales`` when the parameters are read,
``scaled_sizes`` once the header gives the image size): both raise ``InvalidScales``, a ``ValueError``
whose message is written for the client (the service answers it as a 422).

Resizing is Pillow's bilinear filter (the input in its own mode for 8-bit images, per channel in
32-bit float otherwise; the maps always in float), which widens its support when it shrinks,
so a half-size copy is antialiased instead of point-sampled. Pixel centres are aligned
(``align_corners=False``), so a map resized back lands on the input's grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from restore.core.types import ImageArray


class InvalidScales(ValueError):
    """A ``scales`` value that breaks one of the rules; the message says which, in the client's terms."""


#: Most scales one request may ask for: the work grows with each, and 0.5, 1, 1.5 is the usual set.
MAX_SCALES = 4
#: Bounds of one scale. Below 0.1 a photo is a few dozen pixels wide; above 2 the copy is
#: interpolated far past the detail the photo holds, at over 4x its work for that scale alone.
MIN_SCALE, MAX_SCALE = 0.1, 2.0
#: What ``scales=`` omitted means: the input at its own size, the single-scale path.
SINGLE = (1.0,)
#: The usual multi-scale set (RCF, BDCN): the documented example and the benchmark's default.
STANDARD = (0.5, 1.0, 1.5)


@dataclass(frozen=True)
class ScaledSize:
    """One scale of a request and the pixel size the model sees at it."""

    scale: float
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def parse_scales(text: str | None) -> tuple[float, ...]:
    """``"0.5,1,1.5"`` -> ``(0.5, 1.0, 1.5)``, sorted; None -> ``(1.0,)``; ``InvalidScales`` for anything else.

    Sorted, so ``1.5,0.5,1`` and ``0.5,1,1.5`` give the same bytes (the average is summed in this
    order); a scale given twice is refused rather than silently computed twice.
    """
    if text is None:
        return SINGLE
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise InvalidScales("scales is empty: give one to 4 comma-separated factors, e.g. scales=0.5,1,1.5")
    if len(parts) > MAX_SCALES:
        raise InvalidScales(f"scales has {len(parts)} factors; at most {MAX_SCALES} are allowed")
    scales: list[float] = []
    for part in parts:
        try:
            scale = float(part)
        except ValueError:
            raise InvalidScales(f"scales: {part!r} is not a number (give comma-separated factors, e.g. 0.5,1,1.5)") from None
        if not math.isfinite(scale) or not MIN_SCALE <= scale <= MAX_SCALE:
            raise InvalidScales(f"scales: {part!r} is outside {MIN_SCALE:g}..{MAX_SCALE:g}")
        if scale in scales:
            raise InvalidScales(f"scales: {scale:g} is given twice")
        scales.append(scale)
    return tuple(sorted(scales))


def scaled_sizes(scales: tuple[float, ...], height: int, width: int, max_pixels: int) -> tuple[ScaledSize, ...]:
    """The size the model sees at each scale (rounded, at least 1 px a side); ``InvalidScales`` when one of them
    is over ``max_pixels`` (RESTORE_MAX_PIXELS, the largest image the service takes at all)."""
    sizes = []
    for scale in scales:
        size = ScaledSize(scale, max(1, round(height * scale)), max(1, round(width * scale)))
        if scale != 1.0 and size.pixels > max_pixels:
            raise InvalidScales(
                f"scales: at {scale:g} this {width}x{height} image becomes {size.width}x{size.height} "
                f"({size.pixels} pixels), over the limit of {max_pixels}; give smaller scales or a smaller image"
            )
        sizes.append(size)
    return tuple(sizes)


def resize_image(pixels: ImageArray, height: int, width: int) -> ImageArray:
    """``pixels`` (H x W x C, uint8 or uint16) resized bilinearly to ``height x width``, same dtype.

    8-bit gray and RGB go through Pillow in their own mode (its fixed-point resampler, fast);
    anything else channel by channel in 32-bit float, rounded back.
    """
    if pixels.shape[:2] == (height, width):
        return pixels
    channels = pixels.shape[2]
    if pixels.dtype == np.uint8 and channels in (1, 3):
        image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
        resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
        return resized.reshape(height, width, channels)
    top = float(np.iinfo(pixels.dtype).max)
    out = np.empty((height, width, channels), dtype=pixels.dtype)
    for channel in range(channels):
        plane = _resize_plane(pixels[:, :, channel].astype(np.float32), height, width)
        out[:, :, channel] = np.clip(np.rint(plane), 0.0, top).astype(pixels.dtype)
    return out


def resize_map(maps: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    """Model outputs (H x W x C float32) resized bilinearly to ``height x width``, channel by channel."""
    if maps.shape[:2] == (height, width):
        return maps
    out = np.empty((height, width, maps.shape[2]), dtype=np.float32)
    for channel in range(maps.shape[2]):
        out[:, :, channel] = _resize_plane(maps[:, :, channel], height, width)
    return out


def _resize_plane(plane: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # 2-D float32: mode F
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def accumulate(total: npt.NDArray[np.float32] | None, maps: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``total + maps`` in place (a copy of ``maps`` first): one running sum is held, not a list of maps."""
    if total is None:
        return np.array(maps, dtype=np.float32, copy=True)
    total += maps
    return total


def merge(run_at: Callable[[ImageArray], npt.NDArray[np.float32]], pixels: ImageArray, scales: tuple[float, ...]) -> npt.NDArray[np.float32]:
    """The multi-scale computation, synchronously: ``run_at`` maps an image to its model outputs
    (H x W x C float32) any way it likes (whole image, tiled). The same steps in the same order as
    ``pipeline.restore_scales``, so ``training.hed.evaluate`` scores what the service serves."""
    height, width = pixels.shape[:2]
    total: npt.NDArray[np.float32] | None = None
    for size in scaled_sizes(scales, height, width, max_pixels=height * width * int(MAX_SCALE**2) + 1):
        total = accumulate(total, resize_map(run_at(resize_image(pixels, size.height, size.width)), height, width))
    assert total is not None
    total /= np.float32(len(scales))
    return total
