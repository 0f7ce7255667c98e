"""src/restore/core/metrics.py: one PSNR convention (8-bit images, peak 255, every pixel and channel)."""

from __future__ import annotations

import numpy as np
import pytest

from restore.core.metrics import psnr


def test_psnr_of_8_bit_images() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16 * np.sqrt(48)  # one value off by 110: MSE 110^2 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 * 48 / 110**2))
    assert psnr(a, a) == float("inf")


def test_psnr_refuses_different_shapes() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        psnr(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
