"""Noise level of one image, for ``/denoise?sigma=auto``: numpy only, tens of milliseconds per image.

Two published methods, one after the other:

* which patches: the weak-texture selection of Liu, Tanaka and Okutomi (IEEE TIP 2013): a patch
  whose gradient energy ``x' DD x`` is above what noise of the current estimate alone reaches
  with probability ``1 - 1e-6`` holds texture and is left out; re-estimate, select again;
* the level: Chen, Zhu and Heng's eigenvalue rule (ICCV 2015) on the selected patches: the
  smallest eigenvalues of their covariance are the noise variance; take the largest set of
  smallest eigenvalues whose mean is also their median (as many above it as below) and return
  the square root of that mean.

::

    @article{liu2013single,
      title   = {Single-Image Noise Level Estimation for Blind Denoising},
      author  = {Liu, Xinhao and Tanaka, Masayuki and Okutomi, Masatoshi},
      journal = {IEEE Transactions on Image Processing}, volume = {22}, number = {12},
      pages   = {5226--5237}, year = {2013}
    }
    @inproceedings{chen2015efficient,
      title     = {An Efficient Statistical Method for Image Noise Level Estimation},
      author    = {Chen, Guangyong and Zhu, Fengyuan and Heng, Pheng Ann},
      booktitle = {IEEE International Conference on Computer Vision (ICCV)},
      pages     = {477--485}, year = {2015}
    }

Chen's rule alone reads the texture of clean photos as noise of 2-12 (Set12, BSD68); Liu's
selection alone (with its smallest eigenvalue) reads low by 3-6%. Together, on Set12 with sigma
10-50 in 8 bit, the mean error is +3.6% to -6.0% (spread under 2%; clipping at 0 and 255 takes
the high levels down) and clean images read 0.4-2.8; CBSD68 spreads more, film grain reading as
noise and saturated areas hiding it (docs/denoise_real.md).

Colour images are measured on their luma ``Y = 0.299 R + 0.587 G + 0.114 B`` and the result is
scaled by ``1 / LUMA_GAIN`` to the per-channel sigma of independent noise in R, G and B, the noise
the colour models were trained on. Luma is what JPEG keeps at full resolution: 4:2:0 chroma
subsampling removes the fine half of the chroma noise, so per-channel estimates read a JPEG with
sigma 25 noise as about 17, and luma reads it as 26. The same estimate on the chroma plane Cb
(scaled the same way) tells the two apart: ``chroma_ratio`` is about 1 for noise that is white
in R, G and B, and 0.1 or less when JPEG 4:2:0 (or any chroma subsampling) came after the noise,
the case where the blind model leaves the noise in (``pick_sigma``).

Cost: patches are taken every ``stride`` pixels, the stride widened until at most
``MAX_PATCHES`` are left, so a 50 MP image costs what a 1 MP one does and no full-size float copy
of the image is ever made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "PATCH", "MAX_PATCHES", "MIN_PATCHES", "LUMA_WEIGHTS", "LUMA_GAIN", "CHROMA_WEIGHTS", "CHROMA_GAIN",
    "TEXTURE_QUANTILE", "SUBSAMPLED_CHROMA_RATIO", "STRONGER", "LOWEST_LEVEL_ESTIMATE", "AUTO_RULE",
    "NoiseEstimate", "gradient_energy", "noise_sigma", "estimate_noise", "camera_case", "pick_sigma", "pick_model",
]

#: Patch side (Liu et al.'s 7x7).
PATCH = 7
#: Patches used at most: every pixel's patch up to about 0.016 MP, every 8th pixel's at 1 MP
#: (estimates on Set12 and CBSD68 moved by under 0.2 at 2**14, 2**15 and 2**16 patches).
MAX_PATCHES = 1 << 14
#: Patches for the chroma plane: its ratio to luma only has to fall on the right side of 0.25.
CHROMA_PATCHES = 1 << 12
#: Fewer patches than this (an image under about 20x20 pixels) give no estimate.
MIN_PATCHES = 4 * PATCH * PATCH
#: Rounds of selection and estimation (Liu et al. use 3; more change nothing measurable).
ROUNDS = 4
#: ITU-R BT.601 luma, as JPEG and Pillow's convert("L") use.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
#: Std of luma noise per unit of independent per-channel noise: sqrt(sum(w ** 2)).
LUMA_GAIN = float(np.sqrt(np.sum(LUMA_WEIGHTS**2)))
#: ITU-R BT.601 Cb (what JPEG subsamples) and its noise gain, as for luma.
CHROMA_WEIGHTS = np.array([-0.168736, -0.331264, 0.5])
CHROMA_GAIN = float(np.sqrt(np.sum(CHROMA_WEIGHTS**2)))
#: Chroma-to-luma noise ratio below which the chroma noise counts as subsampled. Measured on
#: CBSD68 (docs/denoise_real.md): white noise of sigma 10-50 gives 0.43-1.30 (0.29 at sigma 5),
#: the same then JPEG 4:2:0 0.01-0.11 (0.21 at sigma 5, where the estimate keeps the blind model).
SUBSAMPLED_CHROMA_RATIO = 0.25
#: sigma=auto picks the smallest level at least this share of the estimate: a level-specific model
#: fails fast on more noise than it was trained for, and costs less on less.
STRONGER = 0.85
#: Below this estimate sigma=auto keeps the blind model even for subsampled chroma (clean JPEGs
#: read as 1-11).
LOWEST_LEVEL_ESTIMATE = 10.0
#: The rule, as the API documents it.
AUTO_RULE = (
    "the blind model, unless the image is colour and its chroma noise lacks its fine half (what JPEG 4:2:0 "
    "chroma subsampling after the noise leaves) with an estimate of at least "
    f"{LOWEST_LEVEL_ESTIMATE:g}: then the camera-noise model (dncnn-color-real) where one is loaded, else the model "
    f"of the smallest level (15, 25, 50) at least {STRONGER:g} times the estimate. Measured on CBSD68: on white noise "
    "the blind model is within 0.1 dB of each level's own model at that level and better between levels (the camera "
    "model loses 0.2-2.8 dB there), while on JPEG 4:2:0 the blind model gains under 1 dB, the level's model 3-7 dB and "
    "the camera model as much or more (up to 1.1 dB more between levels and on signal-dependent noise)."
)
#: Liu et al.'s threshold for noise variance 1: the 1 - 1e-6 quantile of Gamma(r / 2, 2 tr(DD) / r),
#: r = rank(DD) = 45, tr(DD) = 35 for 7x7 patches (scipy.stats.gamma.ppf; checked in the tests).
TEXTURE_QUANTILE = 81.82076743668523


def gradient_energy(patches: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Liu et al.'s texture strength ``x' DD x`` of each row of ``patches`` (N x PATCH**2): the
    summed squared central differences ``(x[k+1] - x[k-1]) / 2`` along both axes inside the patch.

    Computed elementwise, not as a matrix product: a large product would start BLAS threads that
    compete with ONNX Runtime's for the same cores.
    """
    square = patches.reshape(-1, PATCH, PATCH)
    across = (square[:, :, 2:] - square[:, :, :-2]) * 0.5
    down = (square[:, 2:, :] - square[:, :-2, :]) * 0.5
    return np.sum(across * across, axis=(1, 2)) + np.sum(down * down, axis=(1, 2))


def _balanced_mean(eigenvalues: npt.NDArray[np.float64]) -> float:
    """Chen et al.: the mean of the largest set of smallest eigenvalues with as many above it as
    below it (``eigenvalues`` ascending)."""
    for count in range(len(eigenvalues), 0, -1):
        smallest = eigenvalues[:count]
        mean = float(smallest.mean())
        if np.count_nonzero(smallest > mean) == np.count_nonzero(smallest < mean):
            return mean
    return float(eigenvalues[0])  # not reached: a single eigenvalue balances


def _variance(patches: npt.NDArray[np.float64]) -> float:
    centred = patches - patches.mean(axis=0)
    covariance = centred.T @ centred / (len(patches) - 1)  # A'A: numpy calls syrk, one thread at this size
    return max(_balanced_mean(np.linalg.eigvalsh(covariance)), 0.0)


def noise_sigma(patches: npt.NDArray[np.float64]) -> float | None:
    """Noise std of ``N x PATCH**2`` patches (rows), in their units; ``None`` under MIN_PATCHES."""
    if len(patches) < MIN_PATCHES:
        return None
    texture = gradient_energy(patches)
    variance = _variance(patches)
    kept = np.ones(len(patches), dtype=bool)
    for _ in range(ROUNDS - 1):
        selected = texture < variance * TEXTURE_QUANTILE
        if np.count_nonzero(selected) < MIN_PATCHES or np.array_equal(selected, kept):
            break
        kept = selected
        variance = _variance(patches[kept])
    return math.sqrt(variance)


def _plane_patches(
    color: npt.NDArray[np.generic], weights: npt.NDArray[np.float64], most: int = MAX_PATCHES
) -> npt.NDArray[np.float64]:
    """Patches every ``stride`` pixels (at most about ``most``) of the plane ``color @ weights``, as rows."""
    height, width, channels = color.shape
    rows, cols = height - PATCH + 1, width - PATCH + 1
    if rows <= 0 or cols <= 0:
        return np.empty((0, PATCH * PATCH))
    stride = max(1, math.ceil(math.sqrt(rows * cols / most)))
    windows = sliding_window_view(color, (PATCH, PATCH), axis=(0, 1))[::stride, ::stride]
    patches = windows.reshape(-1, channels, PATCH * PATCH)
    plane = patches[:, 0] * weights[0]
    for channel in range(1, channels):
        plane += patches[:, channel] * weights[channel]
    return plane


@dataclass(frozen=True)
class NoiseEstimate:
    """What ``sigma=auto`` measures of one image."""

    sigma: float | None  # noise std per channel, 0-255 scale; None: too small to tell
    chroma_ratio: float | None = None  # colour: chroma noise / luma noise, each per unit of RGB noise

    @property
    def subsampled_chroma(self) -> bool:
        """The chroma noise lacks its fine half: chroma was subsampled after the noise (JPEG 4:2:0)."""
        return self.chroma_ratio is not None and self.chroma_ratio < SUBSAMPLED_CHROMA_RATIO


def estimate_noise(color: npt.NDArray[np.generic], max_value: float) -> NoiseEstimate:
    """The noise of an ``H x W x C`` image (C = 1 or 3); ``max_value`` is its white (255 or 65535)."""
    if color.ndim != 3 or color.shape[2] not in (1, 3):
        raise ValueError(f"expected an H x W x 1 or H x W x 3 image, got shape {color.shape}")
    scale = 255.0 / max_value
    if color.shape[2] == 1:
        return NoiseEstimate(noise_sigma(_plane_patches(color, np.array([scale]))))
    luma = noise_sigma(_plane_patches(color, LUMA_WEIGHTS * scale))
    if luma is None:
        return NoiseEstimate(None)
    chroma = noise_sigma(_plane_patches(color, CHROMA_WEIGHTS * scale, CHROMA_PATCHES))
    sigma = luma / LUMA_GAIN
    ratio = None if chroma is None or sigma == 0 else chroma / CHROMA_GAIN / sigma
    return NoiseEstimate(sigma, ratio)


def _level_for(sigma: float | None, levels: Sequence[float]) -> float:
    """The smallest level at least STRONGER * sigma (the highest if none; the lowest when unknown)."""
    if sigma is None:
        return levels[0]
    return next((level for level in levels if level >= STRONGER * sigma), levels[-1])


def camera_case(estimate: NoiseEstimate) -> bool:
    """Whether the rule leaves the blind Gaussian model: colour noise under 4:2:0, at a level worth a
    specialised model (AUTO_RULE); a camera-noise model then serves it where one is loaded."""
    return estimate.sigma is not None and estimate.subsampled_chroma and estimate.sigma >= LOWEST_LEVEL_ESTIMATE


def pick_sigma(estimate: NoiseEstimate, offered: Sequence[float | None]) -> float | None:
    """The ``sigma`` of the Gaussian model ``sigma=auto`` uses among ``offered`` (None: a blind
    model) when no camera-noise model takes the image: AUTO_RULE."""
    levels = sorted(s for s in offered if s is not None)
    if not levels:
        return None
    if None not in offered:
        return _level_for(estimate.sigma, levels)
    if not camera_case(estimate):
        return None
    return _level_for(estimate.sigma, levels)


def pick_model(estimate: NoiseEstimate, offered: Sequence[tuple[float | None, str]]) -> int:
    """Which of ``offered`` (each model's ``(sigma, noise)``, in manifest order) ``sigma=auto`` takes:
    the first camera-noise model in its case (``camera_case``; also when it is the only kind), else
    the first Gaussian model of ``pick_sigma``'s level. The one copy of the rule the service and
    ``training.dncnn.auto_rule`` share."""
    camera = [i for i, (_, noise) in enumerate(offered) if noise == "camera"]
    gaussian = [i for i, (_, noise) in enumerate(offered) if noise != "camera"]
    if camera and (camera_case(estimate) or not gaussian):
        return camera[0]
    level = pick_sigma(estimate, [offered[i][0] for i in gaussian])
    return next(i for i in gaussian if offered[i][0] == level)
