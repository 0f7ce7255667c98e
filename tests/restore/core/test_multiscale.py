"""src/restore/core/multiscale.py: the rules of ``scales`` (InvalidScales for every bad value, sizes checked
against the pixel limit) and the resizes; /edges?scales= through the service is
tests/restore/service/api/test_edges_scales.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from restore.core.multiscale import MAX_SCALES, STANDARD, InvalidScales, ScaledSize, merge, parse_scales, resize_image, resize_map, scaled_sizes
from tests.conftest import noisy_image


# ------------------------------------------------------------------------------------ the rules
def test_omitted_is_the_single_scale_and_factors_are_sorted() -> None:
    assert parse_scales(None) == (1.0,)
    assert parse_scales("1.5, 0.5,1") == parse_scales("0.5,1,1.5") == STANDARD
    assert parse_scales("2") == (2.0,) and parse_scales("0.1,2") == (0.1, 2.0)


@pytest.mark.parametrize(
    "text,why",
    [
        ("", "empty"), (" , ", "empty"), ("-1", "outside"), ("0", "outside"), ("0.5,-0.5", "outside"),
        ("2.5", "outside"), ("0.05", "outside"), ("nan", "outside"), ("inf", "outside"), ("x", "not a number"),
        ("1,,2", "not a number"), ("1,1.0", "twice"), ("0.5,0.75,1,1.25,1.5", "at most"),
    ],
)
def test_bad_scales_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidScales, match=why):
        parse_scales(text)


def test_at_most_max_scales_factors_are_taken() -> None:
    assert len(parse_scales(",".join(str(0.5 + 0.25 * k) for k in range(MAX_SCALES)))) == MAX_SCALES


def test_scaled_sizes_round_keep_a_pixel_and_respect_the_pixel_limit() -> None:
    assert scaled_sizes((0.5, 1.0, 1.5), 101, 200, 10**6) == (
        ScaledSize(0.5, 50, 100), ScaledSize(1.0, 101, 200), ScaledSize(1.5, 152, 300)
    )
    assert scaled_sizes((0.1,), 3, 4, 100) == (ScaledSize(0.1, 1, 1),)
    assert scaled_sizes((1.0, 1.4), 100, 100, 19_600)[1].pixels == 19_600  # exactly at the limit: taken
    with pytest.raises(InvalidScales, match=r"at 1.5 this 100x100 image becomes 150x150 \(22500 pixels\)"):
        scaled_sizes((1.0, 1.5), 100, 100, 20_000)
    assert scaled_sizes((1.0,), 200, 200, 20_000)  # scale 1 is the image itself: its limit is checked on upload


# ----------------------------------------------------------------------------------- resizing
def test_resize_image_keeps_dtype_and_channels_and_16_bit_agrees_with_8_bit() -> None:
    rgb = noisy_image(40, 60, 3, seed=1)
    small = resize_image(rgb, 20, 30)
    assert small.shape == (20, 30, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(small, np.asarray(Image.fromarray(rgb).resize((30, 20), Image.Resampling.BILINEAR)))
    wide = resize_image(rgb.astype(np.uint16) * 257, 20, 30)  # the float path, same filter
    assert wide.dtype == np.uint16
    assert np.abs(wide.astype(np.float64) / 257 - small).max() <= 1.0  # 8-bit rounding apart
    gray = resize_image(rgb[:, :, :1].copy(), 60, 90)
    assert gray.shape == (60, 90, 1) and gray.dtype == np.uint8
    assert resize_image(rgb, 40, 60) is rgb  # scale 1: the pixels themselves, untouched


def test_resize_map_of_a_constant_is_constant_and_a_ramp_stays_a_ramp() -> None:
    maps = np.full((30, 40, 6), 0.25, dtype=np.float32)
    assert np.allclose(resize_map(maps, 45, 60), 0.25)
    ramp = np.tile(np.arange(40, dtype=np.float32)[None, :, None], (30, 1, 1))
    up = resize_map(ramp, 30, 80)[:, :, 0]
    # Centres aligned: output column j samples input x = (j + 0.5) / 2 - 0.5 (clamped at the ends).
    expected = np.clip((np.arange(80) + 0.5) / 2 - 0.5, 0, 39)
    np.testing.assert_allclose(up[0], expected, atol=1e-4)


def test_merge_of_the_identity_on_a_flat_image_is_the_image() -> None:
    flat = np.full((33, 47, 3), 120, dtype=np.uint8)
    out = merge(lambda pixels: pixels.astype(np.float32) / 255, flat, STANDARD)
    assert out.shape == (33, 47, 3) and np.allclose(out, 120 / 255, atol=1e-6)
