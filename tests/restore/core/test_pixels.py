"""src/restore/core/pixels.py: the one rule from model output to pixels (clip, scale, round half up)."""

from __future__ import annotations

import numpy as np
import pytest

from restore.core.pixels import to_pixels


def test_clips_and_rounds_half_up() -> None:
    values = np.array([-0.5, 0.0, 0.49 / 255, 0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0, 1.2])
    np.testing.assert_array_equal(to_pixels(values), [0, 0, 0, 1, 2, 3, 255, 255])
    assert to_pixels(values).dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_in_place_gives_the_same_pixels_and_leaves_a_copy_alone(dtype: type) -> None:
    values = np.random.default_rng(0).uniform(-0.1, 1.1, (8, 9, 3)).astype(np.float32)
    kept = values.copy()
    copied = to_pixels(values, dtype)
    np.testing.assert_array_equal(values, kept)  # the default leaves the input untouched
    in_place = to_pixels(values, dtype, overwrite=True)
    np.testing.assert_array_equal(copied, in_place)
    assert in_place.dtype == dtype and in_place.max() == np.iinfo(dtype).max
