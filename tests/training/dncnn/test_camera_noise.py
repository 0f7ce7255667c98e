"""training/dncnn/camera_noise.py: the statistics of the camera-like noise the colour model learns."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from restore.core.pixels import to_pixels
from training.dncnn import camera_noise as cn
from PIL import JpegImagePlugin

LUMA = np.array([0.299, 0.587, 0.114])


def flat(level: float, side: int = 192) -> np.ndarray:
    return np.full((side, side, 3), level)


def test_srgb_curves_are_iec_61966_and_invert_each_other() -> None:
    values = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(cn.linear_to_srgb(cn.srgb_to_linear(values)), values, atol=1e-12)
    assert cn.srgb_to_linear(np.array(0.5)) == pytest.approx(0.2140, abs=1e-4)
    assert cn.srgb_to_linear(np.array(0.04)) == pytest.approx(0.04 / 12.92)


def test_read_noise_follows_brooks_et_al() -> None:
    for shot in (1e-4, 1e-3, 1e-2):
        assert math.log(cn.read_variance(shot)) == pytest.approx(2.18 * math.log(shot) + 1.20)
    spread = [math.log(cn.read_variance(1e-3, np.random.default_rng(i))) for i in range(400)]
    assert np.std(spread) == pytest.approx(0.26, rel=0.15)


@pytest.mark.parametrize("level", [0.4, 0.6, 0.8])  # darker levels lose part of their noise to clipping at 0
def test_sensor_noise_has_variance_shot_x_plus_read_in_linear_light(level: float) -> None:
    shot, read = 0.01, cn.read_variance(0.01)
    linear = cn.srgb_to_linear(np.array(level))
    noisy = cn.poisson_gaussian(flat(level), shot, read, np.random.default_rng(1))
    measured = cn.srgb_to_linear(noisy).std()
    assert measured == pytest.approx(math.sqrt(shot * linear + read), rel=0.05)


def test_sensor_noise_depends_on_the_signal_as_documented() -> None:
    """8-bit std: about 14 at mid-grey and 20 in dark tones at shot 0.01; 29 and 34 at 0.03."""
    rng = np.random.default_rng(2)

    def std(level: float, shot: float) -> float:
        noisy = to_pixels(cn.poisson_gaussian(flat(level), shot, cn.read_variance(shot), rng))
        return float(noisy.astype(float).std())

    assert std(0.5, 0.01) == pytest.approx(14, abs=1.5) and std(0.2, 0.01) == pytest.approx(20, abs=1.5)
    assert std(0.5, 0.03) == pytest.approx(29, abs=2) and std(0.2, 0.03) == pytest.approx(34, abs=2)
    assert std(0.8, 0.01) < std(0.5, 0.01) < std(0.2, 0.01)  # unlike Gaussian noise, shadows are noisier


def test_420_jpeg_keeps_luma_noise_and_removes_fine_chroma_noise() -> None:
    rng = np.random.default_rng(3)
    noisy = to_pixels(flat(0.5) + 25 / 255 * rng.standard_normal((192, 192, 3)))
    results = {}
    for subsampling in ("4:4:4", "4:2:0"):
        out = cn.jpeg(noisy, 90, subsampling).astype(float)
        luma = out @ LUMA
        results[subsampling] = (out.std(axis=(0, 1)).mean(), luma.std(), (out[:, :, 2] - luma).std())
    (channel_444, luma_444, chroma_444), (channel_420, luma_420, chroma_420) = results.values()
    assert luma_420 == pytest.approx(luma_444, rel=0.02) == pytest.approx(25 * 0.6686, rel=0.1)
    assert chroma_420 < 0.4 * chroma_444
    assert channel_420 == pytest.approx(18.3, abs=1.5) and channel_444 > 24


def test_jpeg_offset_moves_the_block_grid_and_keeps_the_size() -> None:
    y, x = np.mgrid[0:50, 0:50] / 50.0
    image = to_pixels(np.dstack([x, y, (x + y) / 2]) + 0.02 * np.random.default_rng(4).standard_normal((50, 50, 3)))
    plain, shifted = cn.jpeg(image, 80, "4:2:0"), cn.jpeg(image, 80, "4:2:0", offset=(5, 11))
    assert plain.shape == shifted.shape == image.shape and plain.dtype == np.uint8
    assert not np.array_equal(plain, shifted)
    assert np.abs(shifted.astype(float) - image).mean() < 6


def test_encode_jpeg_writes_the_requested_chroma_subsampling() -> None:
    image = to_pixels(np.random.default_rng(5).random((32, 32, 3)))
    for name, code in cn.SUBSAMPLING.items():
        decoded = Image.open(io.BytesIO(cn.encode_jpeg(image, 90, name)))
        assert JpegImagePlugin.get_sampling(decoded) == code


def test_camera_batch_mixes_the_four_families_and_is_seeded() -> None:
    clean = np.full((64, 3, 24, 24), 0.5, np.float32)
    first = cn.camera_batch(clean, np.random.default_rng(6))
    np.testing.assert_array_equal(first, cn.camera_batch(clean, np.random.default_rng(6)))
    assert first.shape == clean.shape and first.dtype == np.float32
    eight_bit = [bool(np.allclose(p * 255, np.round(p * 255), atol=1e-4)) for p in first]
    assert 6 <= eight_bit.count(False) <= 26  # the float Gaussian quarter; the rest are 8-bit files
    residual = (first - clean).reshape(64, -1).std(axis=1) * 255
    assert residual.max() < 80 and np.count_nonzero(residual > 1) > 48
    for share, float_count in ((1.0, 64), (0.0, 0)):  # the plain Gaussian share is the run's choice
        noisy = cn.camera_batch(clean, np.random.default_rng(7), gaussian_share=share)
        assert sum(not np.allclose(p * 255, np.round(p * 255), atol=1e-4) for p in noisy) == float_count
    with pytest.raises(ValueError):
        cn.camera_batch(clean, np.random.default_rng(0), gaussian_share=1.5)
    with pytest.raises(ValueError):
        cn.camera_batch(clean[:, :1], np.random.default_rng(0))
    with pytest.raises(ValueError):
        cn.camera_noisy(flat(0.5), "speckle", np.random.default_rng(0))


def test_test_families_are_deterministic_files() -> None:
    clean = to_pixels(np.random.default_rng(7).random((40, 48, 3)))
    for family in cn.TEST_FAMILIES:
        data = family.file_bytes(clean, np.random.default_rng(8))
        assert data == family.file_bytes(clean, np.random.default_rng(8))
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == ("PNG" if family.quality is None else "JPEG") and decoded.size == (48, 40)
