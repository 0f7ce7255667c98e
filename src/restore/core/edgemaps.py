"""Edge-map post-processing: non-maximum suppression to one-pixel-wide edges, and thresholding.

numpy only (this module runs in the slim runtime image). Maps are 2-D float arrays of edge
probabilities in ``[0, 1]`` (HED's fused output); every function keeps the shape.

``nms`` is Dollar's ``edgesNms`` as the BSDS edge benchmarks run it on HED, RCF and SE outputs
(Structured Edge Detection Toolbox, ``edgesNmsMex.cpp``, MSR-LA licence; re-implemented here)::

    E = convTri(E, 1);  [Ox, Oy] = gradient2(convTri(E, 4));
    [Oxx, ~] = gradient2(Ox);  [Oxy, Oyy] = gradient2(Oy);
    O = mod(atan(Oyy .* sign(-Oxy) ./ (Oxx + 1e-5)), pi);
    E = edgesNmsMex(E, O, r=1, s=5, m=1.01);

i.e. the edge *orientation* comes from the second derivatives of the heavily smoothed map (not
the gradient direction, which is ill-defined on the crest of a ridge-shaped edge response); for a
ridge of normal angle theta the formula gives ``atan(tan(theta)^2)``, exact at multiples of 45
degrees and up to ~12 degrees off between them, which the benchmarks accept as it is. A
pixel is kept when ``m`` times its value is at least the bilinearly interpolated values ``1..r``
pixels away on both sides across the edge, and values fade linearly to zero over ``s`` pixels at
the image border. Departures: ``atan(a / (b + 1e-5))`` is computed as ``arctan2(a, b + 1e-5)``
(equal modulo pi, no division by zero); ``sign(-Oxy)`` counts 0 as +1 (MATLAB's ``sign(0) = 0``
zeroes the angle of exactly axis-aligned edges, e.g. a horizontal ridge, whose suppression then
runs along the edge instead of across it; on real maps ``Oxy`` is never exactly 0); NaN inputs
count as 0. Computation is float64 (the MEX file uses float32).

``m = 1.01`` keeps near-ties, so a ridge centred between two pixels survives two pixels wide.
``thin`` therefore follows the NMS with morphological thinning of the surviving pixels (Guo & Hall
1989, the algorithm of MATLAB's ``bwmorph(..., 'thin', Inf)`` and ``skimage.morphology.thin``),
which is what the benchmark does to every thresholded map: the result is one pixel wide.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["conv_tri", "edge_orientation", "nms", "thin_mask", "thin", "binarize"]

FloatMap = npt.NDArray[np.floating]
Mask = npt.NDArray[np.bool_]

# Weights of the 8 neighbours when encoding a 3x3 neighbourhood as a byte (P1 = east,
# counter-clockwise), the encoding of MATLAB's and scikit-image's thinning tables.
_NEIGHBOUR_BITS = ((0, 1, 1), (-1, 1, 2), (-1, 0, 4), (-1, -1, 8), (0, -1, 16), (1, -1, 32),
                   (1, 0, 64), (1, 1, 128))


def _as_map(prob: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(prob, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"edge map must be 2-D (height, width), got shape {array.shape}")
    return np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0)


def conv_tri(image: FloatMap, radius: int) -> npt.NDArray[np.float64]:
    """Dollar's ``convTri``: separable triangle filter ``[1 .. r+1 .. 1] / (r+1)^2``, symmetric padding."""
    if radius < 1:
        return np.asarray(image, dtype=np.float64)
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]) / (radius + 1) ** 2
    out = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        length = out.shape[axis]
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], "symmetric")
        acc = np.zeros_like(out)
        for tap, weight in enumerate(kernel):
            acc += weight * np.take(padded, np.arange(tap, tap + length), axis=axis)
        out = acc
    return out


def _gradient(image: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    """MATLAB ``gradient`` along one axis (central inside, one-sided at the ends; 0 if length 1)."""
    if image.shape[axis] < 2:
        return np.zeros_like(image)
    return np.gradient(image, axis=axis)


def edge_orientation(edges: FloatMap) -> npt.NDArray[np.float64]:
    """Edge normal angle in ``[0, pi)`` from the second derivatives of ``convTri(edges, 4)``."""
    smooth = conv_tri(edges, 4)
    ox, oy = _gradient(smooth, 1), _gradient(smooth, 0)
    oxx, oxy, oyy = _gradient(ox, 1), _gradient(oy, 1), _gradient(oy, 0)
    sign = np.where(oxy > 0, -1.0, 1.0)  # sign(-Oxy), except that sign(0) counts as +1
    return np.mod(np.arctan2(oyy * sign, oxx + 1e-5), np.pi)


def _interp(image: npt.NDArray[np.float64], x: FloatMap, y: FloatMap) -> npt.NDArray[np.float64]:
    """Bilinear lookup with coordinates clamped into the image (``edgesNmsMex.cpp::interp``)."""
    h, w = image.shape
    x = np.clip(x, 0.0, max(w - 1.001, 0.0))
    y = np.clip(y, 0.0, max(h - 1.001, 0.0))
    x0, y0 = x.astype(np.intp), y.astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    dx, dy = x - x0, y - y0
    return (image[y0, x0] * (1 - dx) * (1 - dy) + image[y0, x1] * dx * (1 - dy)
            + image[y1, x0] * (1 - dx) * dy + image[y1, x1] * dx * dy)


def nms(prob: npt.ArrayLike, radius: int = 1, border: int = 5, multiplier: float = 1.01) -> npt.NDArray[np.float32]:
    """``edgesNms``: smoothed map with every non-maximum across the edge set to 0 (see module doc)."""
    edges = conv_tri(_as_map(prob), 1)
    h, w = edges.shape
    angle = edge_orientation(edges)
    cos, sin = np.cos(angle), np.sin(angle)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    out = edges.copy()
    scaled = edges * multiplier
    for step in range(-radius, radius + 1):
        if step:
            out[scaled < _interp(edges, cols + step * cos, rows + step * sin)] = 0.0
    border = min(border, w // 2, h // 2)
    if border > 0:
        ramp = np.arange(border) / border  # factor x / s for the s pixels nearest each border
        for axis, length in ((0, h), (1, w)):
            factor = np.ones(length)
            factor[:border] *= ramp
            factor[length - border :] *= ramp[::-1]
            out *= factor[:, None] if axis == 0 else factor[None, :]
    return out.astype(np.float32)


def _thinning_tables() -> tuple[Mask, Mask]:
    """Deletion tables of Guo & Hall's two sub-iterations, indexed by the neighbourhood byte."""
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        p = [bool(code >> i & 1) for i in range(8)]  # p[0] = P1 (east) ... p[7] = P8
        crossings = sum(1 for i in (0, 2, 4, 6) if not p[i] and (p[i + 1] or p[(i + 2) % 8]))
        n1 = sum(1 for k in (1, 3, 5, 7) if p[k] or p[k - 1])
        n2 = sum(1 for k in (1, 3, 5, 7) if p[k] or p[(k + 1) % 8])
        removable = crossings == 1 and min(n1, n2) in (2, 3)
        first[code] = removable and not ((p[1] or p[2] or not p[7]) and p[0])
        second[code] = removable and not ((p[5] or p[6] or not p[3]) and p[4])
    return first, second


_THIN_TABLES = _thinning_tables()


def thin_mask(mask: npt.ArrayLike) -> Mask:
    """Thin a binary mask to one-pixel-wide, connectivity-preserving curves (``bwmorph 'thin' Inf``)."""
    skeleton = np.asarray(mask, dtype=bool).copy()
    if skeleton.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {skeleton.shape}")
    h, w = skeleton.shape
    previous, count = -1, int(skeleton.sum())
    while count != previous:  # until a full iteration deletes nothing
        for table in _THIN_TABLES:
            padded = np.pad(skeleton, 1).astype(np.uint8)
            code = np.zeros((h, w), dtype=np.uint8)
            for dy, dx, bit in _NEIGHBOUR_BITS:
                code |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] * np.uint8(bit)
            skeleton &= ~table[code]
        previous, count = count, int(skeleton.sum())
    return skeleton


def thin(prob: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """One-pixel-wide edges: ``nms`` then thinning of the surviving pixels; values are the NMS values."""
    suppressed = nms(prob)
    return np.where(thin_mask(suppressed > 0), suppressed, np.float32(0))


def binarize(prob: npt.ArrayLike, threshold: float) -> Mask:
    """Edge pixels: ``prob >= threshold`` (the benchmark's rule); NaN is never an edge."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    array = np.asarray(prob)
    if array.ndim != 2:
        raise ValueError(f"edge map must be 2-D (height, width), got shape {array.shape}")
    return np.greater_equal(array, threshold)  # False for NaN
