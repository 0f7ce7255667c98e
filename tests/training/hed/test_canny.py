"""training/hed/canny.py: thresholding the soft Canny map is Canny at that threshold."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.feature import canny

from training.hed.canny import canny_scale, canny_soft


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_canny_soft_thresholds_are_canny(sigma: float) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:80]
    gray = ((x > 30) * 0.5 + (np.hypot(y - 32, x - 55) < 12) * 0.3 + rng.normal(0, 0.03, (64, 80)))
    rgb = (np.clip(np.repeat(gray[:, :, None], 3, axis=2), 0, 1) * 255).astype(np.uint8)
    soft = canny_soft(rgb, sigma)
    scale = canny_scale(sigma)
    for t in (0.1, 0.3, 0.6):
        expected = canny(rgb2gray(rgb), sigma, t / scale, t / scale)
        np.testing.assert_array_equal(soft >= t, expected)
    assert soft.max() == pytest.approx(0.5, abs=0.05)  # the 0.5 step at x = 30, unit-step scaling
