"""export/int8_arithmetic.py: the int16-pair emulation against a plain reference of vpmaddubsw's
pairs, and the probe of ORT's sums (which sums an emulated AVX2 or pre-AVX2 CPU takes is checked in
tests/training/dncnn/test_qat.py, with the simulation those sums feed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from export.int8_arithmetic import ARITHMETICS, INT16_MAX, INT16_MIN, ort_u8s8_arithmetic, pair_excess


def _reference(x: np.ndarray, w: np.ndarray, zero_point: int, stride: int, padding: int, dilation: int) -> np.ndarray:
    """Loops: each output's products in (kernel row, kernel column, channel) order, a zero appended
    to an odd count, neighbours added and clamped to int16, minus the exact sum."""
    batch, channels, height, width = x.shape
    out_c, _, kh, kw = w.shape
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2), constant_values=zero_point)
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    excess = np.zeros((batch, out_c, out_h, out_w), np.int64)
    for n, o, i, j in itertools.product(range(batch), range(out_c), range(out_h), range(out_w)):
        products = [int(padded[n, c, i * stride + ky * dilation, j * stride + kx * dilation]) * int(w[o, c, ky, kx])
                    for ky in range(kh) for kx in range(kw) for c in range(channels)]
        products += [0] * (len(products) % 2)
        pairs = [products[k] + products[k + 1] for k in range(0, len(products), 2)]
        excess[n, o, i, j] = sum(min(max(p, INT16_MIN), INT16_MAX) - p for p in pairs)
    return excess


@pytest.mark.parametrize(
    "channels,kernel,zero_point,stride,padding,dilation",
    [(4, 3, 0, 1, 1, 1), (3, 3, 128, 2, 1, 1), (5, 1, 7, 1, 0, 1), (2, 3, 0, 1, 2, 2)],
)
def test_pair_excess_is_the_saturation_of_neighbouring_products(
    channels: int, kernel: int, zero_point: int, stride: int, padding: int, dilation: int
) -> None:
    rng = np.random.default_rng(channels)
    x = rng.integers(150, 256, (2, channels, 7, 8)).astype(np.uint8)  # large, so that pairs saturate
    w = rng.choice([-127, -120, -3, 0, 5, 100, 127], (3, channels, kernel, kernel)).astype(np.int8)
    excess = pair_excess(x, w, zero_point=zero_point, stride=stride, padding=padding, dilation=dilation)
    expected = _reference(x, w, zero_point, stride, padding, dilation)
    assert excess.shape == expected.shape and np.count_nonzero(expected) > 0
    np.testing.assert_array_equal(excess, expected)


def test_two_largest_products_lose_what_exceeds_int16() -> None:
    x = np.full((1, 2, 1, 1), 255, np.uint8)
    assert pair_excess(x, np.full((1, 2, 1, 1), 127, np.int8))[0, 0, 0, 0] == INT16_MAX - 2 * 255 * 127
    assert pair_excess(x, np.full((1, 2, 1, 1), -127, np.int8))[0, 0, 0, 0] == INT16_MIN + 2 * 255 * 127
    assert pair_excess(x, np.array([127, -127], np.int8).reshape(1, 2, 1, 1))[0, 0, 0, 0] == 0


def test_weights_that_cannot_reach_int16_add_nothing() -> None:
    x = np.full((1, 8, 5, 5), 255, np.uint8)
    w = np.full((4, 8, 3, 3), 64, np.int8)  # 255 x 128 = 32640 <= 32767 for every pair
    assert not pair_excess(x, w, padding=1).any()


def test_both_kernel_families_of_this_cpu_take_the_same_sums() -> None:
    """3 channels run ORT's im2col GEMM, 16 and 64 its symmetric convolution: MLAS picks both by
    the same CPU features (AMX changes the GEMM's instructions, not its exactness)."""
    found = {ort_u8s8_arithmetic(channels) for channels in (3, 16, 64)}
    assert len(found) == 1 and found <= set(ARITHMETICS)
