"""An exported model measured as the service runs it: through the service's tiling, in 8 bit.

The export checks a tile margin with these functions (``export.weather.choose_overlap``) and the
evaluations under ``training/`` score with them, so the margin check and the numbers in the
manifest measure the same thing. Nothing here imports PyTorch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = ["quantize", "psnr", "tiled_forward"]


def quantize(image: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to 8 bit (MATLAB's im2uint8), as the service returns images."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of equal shape (peak 255), over all pixels and channels."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def tiled_forward(
    session: ort.InferenceSession, entry: dict[str, Any], tile_size: int, rgb: npt.NDArray[np.uint8],
    extra: dict[str, np.ndarray] | None = None,
) -> npt.NDArray[np.float32]:
    """``rgb`` (H, W, 3 uint8) through the service tiling with the entry's overlap and multiple;
    ``extra``: more inputs of one row each (a conditioned model's ``weather``)."""
    from restore.core.manifest import ModelSpec
    from restore.service.pipeline import TiledImage, plan_for
    from restore.service.settings import Settings

    spec = ModelSpec.from_entry(entry, Path("."))
    height, width = rgb.shape[:2]
    work = TiledImage(rgb, plan_for(spec, Settings(tile_size=tile_size), height, width), 255)
    for index in range(work.plan.count):
        (out,) = session.run(["output"], {"input": work.tile(index)[None], **(extra or {})})
        work.accept(index, out[0])
    assert work.output is not None
    return work.output  # (H, W, channels)
