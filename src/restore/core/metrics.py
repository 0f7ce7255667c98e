"""Image quality scores with one convention: PSNR in dB of two 8-bit images, peak 255, over every
pixel and channel, as the service returns images (``restore.core.pixels.to_pixels``).

Scoring the bytes a client would receive, not the network's float output, is what makes an
evaluation, an export check and a benchmark comparable: they all measure the same thing.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

PEAK = 255.0


def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    """PSNR in dB of two uint8 images of equal shape; ``inf`` when they are identical."""
    if a.shape != b.shape:
        raise ValueError(f"psnr of different shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK**2 / mse)
