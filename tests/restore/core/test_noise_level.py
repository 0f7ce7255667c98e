"""src/restore/core/noise_level.py: the estimate on generated noise, clean and tiny images, and the model rule."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.stats import gamma

from restore.core import noise_level
from restore.core.noise_level import CHROMA_GAIN, LUMA_GAIN, NoiseEstimate, camera_case, estimate_noise, gradient_energy, pick_sigma
from tests.conftest import noisy_image


def scene(height: int, width: int, channels: int) -> np.ndarray:
    """A clean, smooth scene with edges: sine shading plus a bright square."""
    clean = noisy_image(height, width, channels, noise=0.0).astype(np.float64)
    clean[height // 4: height // 2, width // 4: width // 2] += 60
    return np.clip(clean, 0, 255)


def estimate_sigma(image: np.ndarray, max_value: float) -> float | None:
    return estimate_noise(image, max_value).sigma


def with_noise(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise of std ``sigma`` per channel, clipped and rounded to 8 bit as a file holds it."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma", [5, 15, 25, 50])
def test_gaussian_noise_is_read_within_ten_percent(channels: int, sigma: int) -> None:
    image = with_noise(scene(160, 192, channels), sigma, seed=sigma)
    estimate = estimate_sigma(image, 255)
    assert estimate is not None
    assert abs(estimate - sigma) <= 0.1 * sigma, estimate


@pytest.mark.parametrize("channels", [1, 3])
def test_a_clean_image_reads_low(channels: int) -> None:
    estimate = estimate_sigma(scene(160, 192, channels).round().astype(np.uint8), 255)
    assert estimate is not None and estimate < 2


def test_sixteen_bit_reads_on_the_eight_bit_scale() -> None:
    noisy = with_noise(scene(96, 96, 3), 20)
    wide = noisy.astype(np.uint16) * 257  # the same image in 16 bit
    assert estimate_sigma(wide, 65535) == pytest.approx(estimate_sigma(noisy, 255), rel=1e-9)


def jpeg(image: np.ndarray, subsampling: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=92, subsampling=subsampling)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_jpeg_with_420_chroma_reads_the_noise_through_luma_and_shows_in_the_chroma_ratio() -> None:
    """4:2:0 keeps luma at full resolution: the estimate stays near the per-channel sigma, and the
    chroma noise, averaged over 2x2 pixels, reads far below the luma noise."""
    noisy = with_noise(scene(160, 192, 3), 25)
    white, subsampled = estimate_noise(noisy, 255), estimate_noise(jpeg(noisy, 2), 255)
    assert white.sigma is not None and subsampled.sigma is not None
    assert abs(subsampled.sigma - 25) <= 0.15 * 25, subsampled
    assert white.chroma_ratio is not None and 0.8 < white.chroma_ratio < 1.2 and not white.subsampled_chroma
    assert subsampled.chroma_ratio is not None and subsampled.chroma_ratio < 0.15 and subsampled.subsampled_chroma
    full = estimate_noise(jpeg(noisy, 0), 255)  # 4:4:4 keeps the chroma noise
    assert full.chroma_ratio is not None and full.chroma_ratio > 0.6


def test_large_images_cost_a_bounded_number_of_patches() -> None:
    image = with_noise(scene(900, 1200, 3), 10)  # 1 MP: every 8th patch, not every pixel's
    estimate = estimate_sigma(image, 255)
    assert estimate is not None and abs(estimate - 10) <= 1.0


def test_too_small_or_malformed_images() -> None:
    assert estimate_noise(np.zeros((8, 8, 1), np.uint8), 255) == NoiseEstimate(None)
    assert estimate_noise(np.zeros((3, 900, 3), np.uint8), 255) == NoiseEstimate(None)  # shorter than a patch
    assert estimate_noise(np.zeros((64, 64, 3), np.uint8), 255) == NoiseEstimate(0.0)  # flat: no noise, no ratio
    assert estimate_noise(np.zeros((64, 64, 1), np.uint8), 255).chroma_ratio is None
    with pytest.raises(ValueError):
        estimate_noise(np.zeros((64, 64, 2), np.uint8), 255)


def _gradient_matrix(side: int) -> np.ndarray:
    """Liu et al.'s ``DD = Dh'Dh + Dv'Dv`` built from the difference operators."""
    rows = []
    for transpose in (False, True):
        for i in range(side):
            for j in range(1, side - 1):
                row = np.zeros((side, side))
                row[i, j + 1], row[i, j - 1] = 0.5, -0.5
                rows.append((row.T if transpose else row).ravel())
    difference = np.array(rows)
    return difference.T @ difference


def test_texture_measure_and_threshold_are_liu_et_al() -> None:
    matrix = _gradient_matrix(noise_level.PATCH)
    patches = np.random.default_rng(0).normal(size=(50, noise_level.PATCH**2))
    np.testing.assert_allclose(gradient_energy(patches), np.einsum("ni,ij,nj->n", patches, matrix, patches))
    rank, trace = np.linalg.matrix_rank(matrix), np.trace(matrix)
    assert noise_level.TEXTURE_QUANTILE == pytest.approx(gamma.ppf(1 - 1e-6, rank / 2, scale=2 * trace / rank))
    assert LUMA_GAIN == pytest.approx(np.sqrt(0.299**2 + 0.587**2 + 0.114**2))
    assert CHROMA_GAIN == pytest.approx(np.sqrt(0.168736**2 + 0.331264**2 + 0.5**2))


ALL = [None, 15.0, 25.0, 50.0]
WHITE, JPEG_420 = 1.0, 0.05  # chroma ratios


@pytest.mark.parametrize(
    "sigma,ratio,offered,expected",
    [
        # white noise (or gray, or unknown): the blind model at every level
        (25.0, WHITE, ALL, None), (15.0, WHITE, ALL, None), (50.0, None, ALL, None), (None, None, ALL, None),
        # chroma subsampled after the noise: the smallest level at least 0.85 x the estimate
        (17.0, JPEG_420, ALL, 15.0), (18.0, JPEG_420, ALL, 25.0), (26.0, JPEG_420, ALL, 25.0),
        (31.0, JPEG_420, ALL, 50.0), (46.0, JPEG_420, ALL, 50.0), (70.0, JPEG_420, ALL, 50.0),
        (12.0, JPEG_420, ALL, 15.0), (7.0, JPEG_420, ALL, None),  # a clean JPEG keeps the blind model
        # what is loaded decides
        (26.0, JPEG_420, [None], None), (26.0, WHITE, [15.0, 25.0, 50.0], 25.0), (None, None, [25.0, 50.0], 25.0),
    ],
)
def test_pick_sigma(sigma: float | None, ratio: float | None, offered: list[float | None], expected: float | None) -> None:
    assert pick_sigma(NoiseEstimate(sigma, ratio), offered) == expected


@pytest.mark.parametrize(
    "sigma,ratio,expected",
    [(25.0, JPEG_420, True), (10.0, JPEG_420, True), (9.9, JPEG_420, False), (25.0, WHITE, False), (25.0, None, False),
     (None, JPEG_420, False)],
)
def test_camera_case_is_where_pick_sigma_leaves_the_blind_model(sigma: float | None, ratio: float | None, expected: bool) -> None:
    """A camera-noise model takes exactly the images the level rule would take from the blind model."""
    estimate = NoiseEstimate(sigma, ratio)
    assert camera_case(estimate) is expected
    assert (pick_sigma(estimate, ALL) is not None) is expected
