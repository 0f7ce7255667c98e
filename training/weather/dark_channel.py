"""Dark channel prior dehazing: a classical, training-free baseline for the haze weather.

Papers::

    @article{he2011single,
      title   = {Single Image Haze Removal Using Dark Channel Prior},
      author  = {He, Kaiming and Sun, Jian and Tang, Xiaoou},
      journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
      volume  = {33},
      number  = {12},
      pages   = {2341--2353},
      year    = {2011},
      doi     = {10.1109/TPAMI.2010.168},
      note    = {First published at CVPR 2009, pages 1956--1963}
    }

    @inproceedings{he2010guided,
      title     = {Guided Image Filtering},
      author    = {He, Kaiming and Sun, Jian and Tang, Xiaoou},
      booktitle = {European Conference on Computer Vision (ECCV)},
      pages     = {1--14},
      year      = {2010},
      doi       = {10.1007/978-3-642-15549-9_1}
    }

No upstream code is used; this is an independent NumPy/SciPy implementation under the project's
MIT licence. No file I/O here. Unlike ``models/*.py`` networks it has no weights: it exists so
learned dehazers can be compared with the best-known prior-based method on the same test set.

The method inverts the scattering model ``I = J t + A (1 - t)``:

1. **dark channel** (TPAMI Eq. 5): per-pixel minimum over RGB, then a ``patch x patch`` minimum
   filter. In haze-free outdoor images it is ~0 outside the sky (the prior).
2. **airlight** (Sec. 4.4): among the brightest ``top`` (0.1 %) dark-channel pixels, the input
   pixel of highest intensity -- the paper's choice, not the mean of those pixels. Intensity is
   the channel sum (equivalently the mean). The dark channel, not the input, picks the
   candidates so that white objects do not pass for haze.
3. **transmission** (Eq. 12): ``t = 1 - omega * dark_channel(I / A)``; ``omega = 0.95`` keeps a
   little haze for depth perception.
4. **refinement**: the guided filter (ECCV 2010, Sec. 4 and its Sec. 5 "haze removal" example)
   with the gray input as guide replaces the TPAMI soft matting, which is far slower (a large
   sparse Laplacian solve) and gives nearly the same transmission.
5. **recovery** (Eq. 22): ``J = (I - A) / max(t, t0) + A``, ``t0 = 0.1``, clipped to [0, 1].

Defaults are the papers': patch 15, omega 0.95, t0 0.1, guided filter radius 60 and
eps 1e-4 (ECCV 2010 uses r = 60 for a 600x400 image). The radius is *not* rescaled with the
image size: at BSDS500's 481x321 it is close to the paper's setting; pass ``radius`` explicitly
for much smaller or larger images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.weather.data import FloatImage

__all__ = ["dark_channel", "estimate_airlight", "guided_filter", "dehaze"]

Array = npt.NDArray[np.floating[Any]]
Float64Array = npt.NDArray[np.float64]

# ITU-R BT.601 luma (MATLAB's rgb2gray), the gray guide of the guided filter.
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])
# Keeps I / A finite when a channel of the airlight is black (never for real haze).
_MIN_AIRLIGHT = 1e-6


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")


def dark_channel(image: Array, patch: int = 15) -> Array:
    """Minimum over the channels, then over a ``patch x patch`` window (TPAMI Eq. 5).

    The window is clipped at the border (``mode='nearest'`` only repeats in-image values, so
    the minimum is over the in-image part of the window).
    """
    _check_rgb(image)
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    return ndimage.minimum_filter(image.min(axis=2), size=patch, mode="nearest")


def estimate_airlight(image: Array, dark: Array, top: float = 0.001) -> Float64Array:
    """Airlight ``A`` (3,): the most intense input pixel among the brightest ``top`` of ``dark``.

    This is the paper's rule (TPAMI Sec. 4.4), not the mean of the candidates: the mean is
    pulled down by candidates that are less hazy, the maximum sits on the haziest of them.
    At least one candidate is always taken, so tiny images work.
    """
    _check_rgb(image)
    if dark.shape != image.shape[:2]:
        raise ValueError(f"dark channel {dark.shape} does not match the image {image.shape[:2]}")
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    flat_dark = dark.reshape(-1)
    count = max(1, int(top * flat_dark.size))
    candidates = np.argpartition(flat_dark, flat_dark.size - count)[-count:]  # O(N), unsorted
    pixels = image.reshape(-1, 3)[candidates].astype(np.float64)
    return pixels[np.argmax(pixels.sum(axis=1))]


def _box_mean(x: Float64Array, radius: int, counts: Float64Array) -> Float64Array:
    """Mean over the in-image part of each ``(2r+1)^2`` window, O(N) whatever the radius.

    Zero padding plus division by the in-image pixel count is the reference implementation's
    ``boxfilter(I) / boxfilter(ones)``; it avoids inventing values beyond the border.
    """
    return ndimage.uniform_filter(x, size=2 * radius + 1, mode="constant") / counts


def guided_filter(guide: Array, src: Array, radius: int = 60, eps: float = 1e-4) -> Float64Array:
    """Edge-preserving smoothing of ``src`` (HxW) by a gray ``guide`` (HxW) (ECCV 2010, Alg. 1).

    In each window ``q = a * guide + b``; ``eps`` sets what counts as an edge: windows whose
    guide variance is well above ``eps`` keep ``src``'s structure aligned to the guide's edges
    (``a -> 1`` when ``src == guide``), flatter ones are smoothed (``a -> 0``, so ``q`` tends to
    the box mean of the box mean of ``src``). Computed in float64: ``var = E[I^2] - E[I]^2``
    loses too many digits in float32 next to ``eps = 1e-4``.
    """
    if guide.ndim != 2 or guide.shape != src.shape:
        raise ValueError(f"guide {guide.shape} and src {src.shape} must be the same HxW shape")
    if radius < 0 or eps <= 0:
        raise ValueError(f"need radius >= 0 and eps > 0, got radius={radius}, eps={eps}")
    g = guide.astype(np.float64)
    p = src.astype(np.float64)
    counts = ndimage.uniform_filter(np.ones_like(g), size=2 * radius + 1, mode="constant")
    mean_g = _box_mean(g, radius, counts)
    mean_p = _box_mean(p, radius, counts)
    cov_gp = _box_mean(g * p, radius, counts) - mean_g * mean_p
    var_g = _box_mean(g * g, radius, counts) - mean_g * mean_g
    a = cov_gp / (var_g + eps)
    b = mean_p - a * mean_g
    return _box_mean(a, radius, counts) * g + _box_mean(b, radius, counts)


def dehaze(
    image: Array,
    patch: int = 15,
    omega: float = 0.95,
    t0: float = 0.1,
    radius: int = 60,
    eps: float = 1e-4,
) -> FloatImage:
    """Haze-free estimate ``J`` (HxWx3 float32 in [0, 1]) of a hazy HxWx3 image in [0, 1]."""
    _check_rgb(image)
    hazy = image.astype(np.float64)
    airlight = estimate_airlight(hazy, dark_channel(hazy, patch))
    transmission = 1 - omega * dark_channel(hazy / np.maximum(airlight, _MIN_AIRLIGHT), patch)
    transmission = guided_filter(hazy @ _GRAY_WEIGHTS, transmission, radius, eps)
    # The guided filter can overshoot slightly past [0, 1]; t0 bounds the amplification of noise.
    transmission = np.clip(transmission, t0, 1)[..., None]
    restored = (hazy - airlight) / transmission + airlight
    return np.clip(restored, 0, 1).astype(np.float32)
