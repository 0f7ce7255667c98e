"""export/measure.py: 8-bit PSNR and quantisation (tiled_forward: test_hed_export.py)."""

from __future__ import annotations

import numpy as np
import pytest

from export import measure


def test_psnr_and_quantize() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[0, 0] = 16  # MSE 16
    assert measure.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 16))
    assert measure.psnr(a, a) == float("inf")
    q = measure.quantize(np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 1.2]))
    np.testing.assert_array_equal(q, [0, 0, 0, 2, 255])  # round half to even, then clip
