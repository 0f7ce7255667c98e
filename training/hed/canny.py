"""Canny as an edge-map baseline for the BSDS benchmark: its non-maximum suppressed gradient
magnitude, scaled so that thresholding the map sweeps Canny's own threshold."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from skimage.color import rgb2gray
from skimage.feature._canny import _preprocess
from skimage.feature._canny_cy import _nonmaximum_suppression_bilinear

__all__ = ["canny_scale", "canny_soft"]


def canny_soft(rgb: npt.NDArray[np.uint8], sigma: float) -> npt.NDArray[np.float32]:
    """Canny's non-maximum suppressed gradient magnitude, scaled so a unit step edge gives ~1.

    ``soft >= t`` is exactly ``skimage.feature.canny(gray, sigma, t', t')`` for ``t' = t / scale``
    (equal hysteresis thresholds make hysteresis a no-op), so thresholding it sweeps Canny.
    """
    gray = rgb2gray(rgb) if rgb.ndim == 3 else rgb.astype(np.float64) / 255.0
    smoothed, eroded_mask = _preprocess(gray, None, sigma, "constant", 0.0)
    jsobel = ndi.sobel(smoothed, axis=1)
    isobel = ndi.sobel(smoothed, axis=0)
    magnitude = np.hypot(isobel, jsobel)
    suppressed = _nonmaximum_suppression_bilinear(isobel, jsobel, magnitude, eroded_mask, 0.0)
    return np.clip(np.asarray(suppressed) * canny_scale(sigma), 0.0, 1.0).astype(np.float32)


def canny_scale(sigma: float) -> float:
    """1 / (Sobel response to a unit step smoothed by a Gaussian of ``sigma``).

    Across the step, Sobel's central difference of the sampled, blurred step is
    ``(Phi(1/sigma) - Phi(-1/sigma)) / 2 = erf(1 / (sigma sqrt 2)) / 2``; its [1, 2, 1] smoothing
    along the step and the unnormalised kernels multiply that by 8.
    """
    return 1.0 / (4.0 * math.erf(1.0 / (sigma * math.sqrt(2.0))))
