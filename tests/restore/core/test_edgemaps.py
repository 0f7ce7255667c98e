"""src/restore/core/edgemaps.py: one-pixel-wide thinning, edgesNms semantics, thresholds, NaN and shapes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import thin as skimage_thin

from restore.core.edgemaps import binarize, conv_tri, edge_orientation, nms, thin, thin_mask


def _ridge(distance: np.ndarray, width: float = 2.0) -> np.ndarray:
    """An edge-probability ridge: what HED outputs along a boundary (a blurred, thick line)."""
    return (0.9 * np.exp(-0.5 * (distance / width) ** 2)).astype(np.float32)


def _no_2x2_block(mask: np.ndarray) -> bool:
    return not (mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]).any()


@pytest.mark.parametrize("centre", [20.0, 20.5, 20.3])
def test_thick_line_becomes_one_pixel_wide(centre: float) -> None:
    rows = np.arange(48, dtype=np.float64)[:, None] * np.ones((1, 64))
    out = thin(_ridge(rows - centre))
    assert out.shape == (48, 64) and out.dtype == np.float32
    assert _no_2x2_block(out > 0)
    inner = binarize(out, 0.01)[:, 6:-6]  # nms fades the 5 border pixels to 0
    assert (inner.sum(axis=0) == 1).all(), inner.sum(axis=0)
    assert np.all(np.abs(np.nonzero(inner)[0] - centre) <= 0.5)


def test_disk_boundary_is_a_thin_closed_curve() -> None:
    y, x = np.mgrid[0:96, 0:96].astype(np.float64)
    radius = np.hypot(y - 47.3, x - 48.1)
    out = thin(_ridge(radius - 30.0, width=2.5))
    assert _no_2x2_block(out > 0)
    edge = binarize(out, 0.01)  # the far field (values ~1e-17) keeps faint ridges of its own
    labels, count = ndi.label(edge, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    curve = labels == 1 + int(np.argmax(sizes))
    assert np.abs(radius[curve] - 30.0).max() <= 1.0
    assert 0.7 * 2 * np.pi * 30 <= curve.sum() <= 2 * np.pi * 30  # an 8-connected digital circle
    assert ndi.label(~curve)[1] == 2  # it separates inside from outside: closed
    # edgesNms's orientation is atan(tan(theta)^2) (exact at 0/45/90 degrees only), which lets a
    # few isolated off-ridge pixels through at other angles; the benchmark counts them too.
    assert edge.sum() - curve.sum() <= 4


def test_thin_keeps_nms_values_and_is_idempotent_on_its_support() -> None:
    rng = np.random.default_rng(0)
    prob = ndi.gaussian_filter(rng.random((40, 50)), 2.0).astype(np.float32)
    out = thin(prob)
    suppressed = nms(prob)
    kept = out > 0
    np.testing.assert_array_equal(out[kept], suppressed[kept])
    assert (suppressed[kept] > 0).all()
    np.testing.assert_array_equal(thin_mask(kept), kept)


def test_thin_mask_equals_bwmorph_thin() -> None:
    rng = np.random.default_rng(1)
    for density in (0.2, 0.5, 0.8):
        mask = ndi.binary_dilation(rng.random((70, 90)) < density * 0.1, iterations=2)
        np.testing.assert_array_equal(thin_mask(mask), skimage_thin(mask))


def test_conv_tri_is_the_normalised_triangle_filter() -> None:
    image = np.zeros((9, 11))
    image[4, 5] = 1.0
    out = conv_tri(image, 1)
    np.testing.assert_allclose(out[3:6, 4:7], np.outer([1, 2, 1], [1, 2, 1]) / 16.0)
    assert out.sum() == pytest.approx(1.0)
    flat = conv_tri(np.full((5, 6), 0.25), 4)  # symmetric padding keeps constants constant
    np.testing.assert_allclose(flat, 0.25)


def test_orientation_is_across_the_edge() -> None:
    rows = np.arange(40, dtype=np.float64)[:, None] * np.ones((1, 40))
    horizontal = edge_orientation(_ridge(rows - 20.0).astype(np.float64))
    vertical = edge_orientation(_ridge(rows.T - 20.0).astype(np.float64))
    # A horizontal edge's normal is vertical (pi/2); a vertical edge's is horizontal (0 or ~pi).
    assert np.median(np.abs(horizontal[10:30, 10:30] - np.pi / 2)) < 0.05
    folded = np.minimum(vertical, np.pi - vertical)
    assert np.median(folded[10:30, 10:30]) < 0.05


def test_nms_fades_the_border_and_keeps_shape() -> None:
    out = nms(np.full((20, 30), 0.5, dtype=np.float32))
    assert out.shape == (20, 30)
    assert (out[0] == 0).all() and (out[:, 0] == 0).all() and (out[-1] == 0).all()
    assert out[10, 15] == pytest.approx(0.5)  # a plateau has no stronger neighbour
    assert out[10, 2] == pytest.approx(0.5 * 2 / 5)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (2, 3), (3, 3)])
def test_tiny_maps(shape: tuple[int, int]) -> None:
    prob = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    for out in (nms(prob), thin(prob)):
        assert out.shape == shape
        assert np.isfinite(out).all()


def test_nan_free() -> None:
    prob = _ridge(np.arange(32.0)[:, None] - 16.0) * np.ones((1, 32), dtype=np.float32)
    prob[5:9, 5:9] = np.nan
    prob[20, 3] = np.inf
    out = thin(prob)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not binarize(prob, 0.5)[6, 6]  # NaN is never an edge


def test_binarize_threshold_semantics() -> None:
    prob = np.array([[0.0, 0.3, 0.5], [0.5000001, 0.9, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(
        binarize(prob, 0.5), [[False, False, True], [True, True, True]]
    )
    assert binarize(prob, 0.0).all()
    np.testing.assert_array_equal(binarize(prob, 1.0), prob >= 1.0)
    assert binarize(prob, 0.5).dtype == np.bool_
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            binarize(prob, bad)


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        thin(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        binarize(np.zeros(5), 0.5)
