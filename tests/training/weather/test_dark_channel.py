"""training/weather/dark_channel.py: prior on synthetic scenes, airlight, guided filter, dehazing."""

from __future__ import annotations

import numpy as np
import pytest

from training.weather.dark_channel import dark_channel, dehaze, estimate_airlight, guided_filter
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels

AIRLIGHT = np.array([0.9, 0.85, 0.8])
TRANSMISSION = 0.5
SKY_ROWS = 24


def _prior_scene(h: int = 128, w: int = 128, seed: int = 0) -> np.ndarray:
    """Colourful haze-free image in which every 15x15 patch holds a pixel with one channel at 0.

    Dark pixels sit on a 7-pixel grid, so every window of side >= 7 contains one, while the
    other pixels are bright (>= 0.1 in every channel): the prior holds only through the
    patch minimum, not per pixel.
    """
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 1.0, (h, w, 3))
    ys, xs = np.mgrid[0:h:7, 0:w:7]
    image[ys, xs, rng.integers(0, 3, ys.shape)] = 0.0
    return image


def _hazy_scene() -> tuple[np.ndarray, np.ndarray]:
    """(clean, hazy) by ``I = J t + A (1 - t)`` with constant t and a band of sky on top.

    Sky is the scene at infinite depth, whose radiance is the airlight itself (``J = A``);
    it is where the paper expects the airlight to be found, and with constant ``t`` no
    other pixel shows ``A`` exactly.
    """
    clean = _prior_scene()
    clean[:SKY_ROWS] = AIRLIGHT
    hazy = clean * TRANSMISSION + AIRLIGHT * (1 - TRANSMISSION)
    return clean, hazy.astype(np.float32)


def _brute_box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the in-image part of each (2r+1)^2 window, by explicit loops."""
    h, w = x.shape
    out = np.empty_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            rows = slice(max(0, i - radius), i + radius + 1)
            cols = slice(max(0, j - radius), j + radius + 1)
            out[i, j] = x[rows, cols].mean()
    return out


def test_dark_channel_of_prior_scene_is_zero() -> None:
    image = _prior_scene()
    dark = dark_channel(image)
    assert dark.shape == image.shape[:2]
    assert np.abs(dark).max() < 1e-6
    # Without the patch minimum the same image is far from dark: the filter does the work.
    assert dark_channel(image, patch=1).mean() > 0.05


def test_dark_channel_is_min_over_channels_then_window() -> None:
    image = np.ones((5, 6, 3))
    image[2, 3, 1] = 0.25
    dark = dark_channel(image, patch=3)
    expected = np.ones((5, 6))
    expected[1:4, 2:5] = 0.25
    np.testing.assert_array_equal(dark, expected)


def test_airlight_recovered_from_hazy_scene() -> None:
    _, hazy = _hazy_scene()
    airlight = estimate_airlight(hazy, dark_channel(hazy))
    assert airlight.shape == (3,)
    assert np.abs(airlight - AIRLIGHT).max() < 0.05


def test_airlight_ignores_small_white_objects() -> None:
    """A white object smaller than the patch is the brightest pixel, yet not a candidate."""
    _, hazy = _hazy_scene()
    hazy[90:95, 60:65] = 1.0
    airlight = estimate_airlight(hazy, dark_channel(hazy))
    assert np.abs(airlight - AIRLIGHT).max() < 0.05


def test_dehaze_recovers_clean_scene() -> None:
    clean, hazy = _hazy_scene()
    restored = dehaze(hazy)
    before, after = psnr(to_pixels(hazy), to_pixels(clean)), psnr(to_pixels(restored), to_pixels(clean))
    # omega = 0.95 keeps 5 % of the haze on purpose: ~35 dB is the ideal here, ~30 dB measured.
    assert after > before + 10, (before, after)


def test_guided_filter_self_guided_tiny_eps_is_identity() -> None:
    guide = np.random.default_rng(1).uniform(0, 1, (40, 50))
    out = guided_filter(guide, guide, radius=4, eps=1e-8)
    np.testing.assert_allclose(out, guide, atol=1e-4)


def test_guided_filter_huge_eps_is_box_mean() -> None:
    """With eps >> var, a -> 0 and b -> box mean of src, so q is the box mean applied twice."""
    rng = np.random.default_rng(2)
    guide = rng.uniform(0, 1, (20, 24))
    src = rng.uniform(0, 1, (20, 24))
    radius = 3
    out = guided_filter(guide, src, radius=radius, eps=1e6)
    expected = _brute_box_mean(_brute_box_mean(src, radius), radius)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_guided_filter_keeps_constant_and_edges() -> None:
    guide = np.zeros((30, 30))
    guide[:, 15:] = 1.0
    np.testing.assert_allclose(guided_filter(guide, np.full((30, 30), 0.3), radius=5), 0.3)
    # A step in the guide well above sqrt(eps) survives a radius wider than the step's distance.
    out = guided_filter(guide, guide, radius=5, eps=1e-4)
    np.testing.assert_allclose(out, guide, atol=1e-3)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 96, 3)])
def test_dehaze_contract(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(3).uniform(0, 1, shape).astype(np.float32)
    out = dehaze(image)
    assert out.shape == shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError):
        dehaze(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError):
        guided_filter(np.zeros((8, 8)), np.zeros((8, 9)))
