"""Synthetic adverse-weather training and test data for the unified weather-removal model.

No paired rain/haze/snow set is at hand, so pairs are synthesized from clean BSDS500 photos
(training: train+val, held-out test: a seeded choice of test images). All generators take a
float32 ``HxWx3`` image in [0, 1] and a ``numpy.random.Generator``, return the same shape and
dtype in [0, 1], and are a pure function of the generator's state; an optional ``params`` dict
is filled with what was drawn (JSON-ready), so the test set records how each image was made.

Physical models and parameter ranges (``U(a, b)`` uniform; ``s = clip((min(H, W) / 321) ** 0.25,
0.7, 1.3)`` scales particle and streak sizes modestly with the image, so that 128 px crops and
full 481x321 images look alike; counts scale with the area):

* **haze** -- the atmospheric scattering model ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.
  ``d = random_depth(H, W)``: a Dirichlet(3, 1.5, 1.5) mix of a ground-plane prior (depth growing
  upward to a horizon at ``U(0.1, 0.6)`` of the height, tilted by up to +-0.05, with sky at 1
  beyond it), a smooth low-frequency random field and 2-5 piecewise planes (Voronoi cells),
  built on a coarse grid, cubic-upsampled, min-max normalized, raised to ``U(1, 2)`` (most of a
  photo is near) and mapped to ``[near, 1]``, ``near ~ U(0, 0.15)``. ``beta`` log-uniform on
  [0.6, 2.5]; airlight level ``U(0.7, 1.0)`` with a per-channel tint of up to +-0.05 between
  yellow and blue.
* **rain** -- with p = 0.5 first a light rain-accumulation veil (scattering model,
  ``beta ~ U(0.05, 0.35)``, grey airlight ``U(0.7, 0.95)``), then 1-3 streak layers sharing a
  dominant angle ``U(-30, 30)`` degrees from vertical, +-5 degrees per layer. A layer is sparse
  drops (strength ``U(0.4, 1)``) splatted along a tapered line -- sparse points convolved with a
  rotated line (motion-blur) kernel -- of length ``U(10, 40) s`` px, Gaussian-blurred with
  ``sigma ~ U(0.4, 1.3)`` px (the width), opacity ``U(0.2, 0.75)``; drops number
  ``U(0.01, 0.05) H W / length`` (share of pixels on a streak's axis). Layers are screened
  together and onto the image by screen or additive blending (coin flip).
* **snow** -- a light veil (``beta ~ U(0.1, 0.6)``, airlight ``U(0.75, 0.95)``), then three flake
  layers alpha-composited far to near, each with its own flake value ``U(0.85, 1)``, blur and
  opacity: small dense flakes (``U(2e-3, 8e-3)`` per pixel, blur ``U(0.5, 0.9)`` px, opacity
  ``U(0.6, 0.95)``), medium (``U(3e-4, 1.5e-3)``, ``U(1.0, 1.8) s`` px, ``U(0.6, 0.95)``) and a
  few large defocused near-camera flakes (``U(0, 1.5e-4)``, ``U(2.5, 5) s`` px, ``U(0.3, 0.7)``).
  A blob is ``clip(gain * blurred point)``, ``gain ~ U(1, 3)`` (flat-topped discs); with p = 0.5
  the small and medium flakes fall as motion streaks of ``U(3, 12) s`` px at ``U(-45, 45)``
  degrees.

STATS -- input difficulty on the held-out test set (``write_test_set`` defaults: 50 BSDS500 test
images, seed 2022, full size; PSNR of the 8-bit degraded image against the 8-bit clean one):

=======  =========  ===============  ===============
weather  mean (dB)  10th-90th pct    min-max
=======  =========  ===============  ===============
rain     21.5       17.9 - 26.5      14.6 - 31.0
haze     13.6        9.1 - 18.6       6.8 - 22.0
snow     18.3       14.6 - 22.0      13.0 - 23.8
=======  =========  ===============  ===============

``STATS`` holds these numbers and, per weather, bounds on the mean ``|degraded - clean|`` of a
mid-grey texture (96-481 px, 300 seeds each: rain 0.001-0.13, haze 0.05-0.40, snow 0.017-0.17),
which ``tests/training/weather/test_data.py`` asserts with some margin.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

__all__ = [
    "WEATHERS", "STATS", "FloatImage", "random_depth", "add_rain", "add_haze",
    "add_snow", "degrade", "read_rgb", "load_images", "WeatherPatches",
]

FloatImage = npt.NDArray[np.float32]
Params = dict[str, Any] | None

WEATHERS = ("rain", "haze", "snow")
# Test-set input PSNR in dB, and bounds on mean |degraded - clean| of a mid-grey texture.
STATS: dict[str, dict[str, Any]] = {
    "rain": {"psnr_mean": 21.5, "psnr_p10_p90": (17.9, 26.5), "psnr_range": (14.6, 31.0),
             "mean_abs": (0.0005, 0.15)},
    "haze": {"psnr_mean": 13.6, "psnr_p10_p90": (9.1, 18.6), "psnr_range": (6.8, 22.0),
             "mean_abs": (0.04, 0.45)},
    "snow": {"psnr_mean": 18.3, "psnr_p10_p90": (14.6, 22.0), "psnr_range": (13.0, 23.8),
             "mean_abs": (0.01, 0.20)},
}


def _check(clean: FloatImage) -> None:
    if clean.dtype != np.float32 or clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"need a float32 HxWx3 image, got {clean.dtype}{clean.shape}")


def _size_factor(h: int, w: int) -> float:
    return float(np.clip((min(h, w) / 321) ** 0.25, 0.7, 1.3))


def _record(params: Params, **values: Any) -> None:
    """Store drawn values as plain Python numbers, so ``params`` goes straight to JSON."""
    if params is not None:
        params.update({k: float(v) if isinstance(v, np.floating) else v for k, v in values.items()})


# --- depth and the scattering model ---------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _cubic_taps(n_out: int, n_in: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Keys-cubic resampling from ``n_in`` to ``n_out`` samples: 4 (index, weight) taps each.

    Applied by gathering rather than as a matrix product: BLAS threads make tiny products
    erratic (5-20x slower) on a busy machine.
    """
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(pos).astype(np.intp)[:, None] + np.arange(-1, 3)
    x = np.abs(pos[:, None] - base)
    outer = np.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0)
    weight = np.where(x < 1, 1.5 * x**3 - 2.5 * x**2 + 1, outer).astype(np.float32)
    index = np.clip(base, 0, n_in - 1)
    index.flags.writeable = weight.flags.writeable = False  # cached and shared
    return index, weight


def _upsample(grid: np.ndarray, h: int, w: int) -> FloatImage:
    """Cubic upsampling of a coarse grid to ``h x w``, edges clamped."""
    index, weight = _cubic_taps(h, grid.shape[0])
    rows = np.einsum("hk,hkw->hw", weight, grid.astype(np.float32)[index])
    index, weight = _cubic_taps(w, grid.shape[1])
    return np.einsum("wk,hwk->hw", weight, rows[:, index])


def _normalize(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min())
    return (x - x.min()) / span if span > 1e-8 else np.zeros_like(x)


def random_depth(h: int, w: int, rng: np.random.Generator, params: Params = None) -> FloatImage:
    """A plausible relative depth map in [0, 1] (1 = far): ground plane, smooth field, planes.

    Built on a grid of at most 48 cells a side and cubic-upsampled, because haze varies slowly
    and a full-size construction would cost tens of milliseconds.
    """
    gh, gw = (48, max(4, round(48 * w / h))) if h >= w else (max(4, round(48 * h / w)), 48)
    y = (np.arange(gh)[:, None] + 0.5) / gh
    x = (np.arange(gw)[None, :] + 0.5) / gw
    horizon = rng.uniform(0.1, 0.6) + rng.uniform(-0.1, 0.1) * (x - 0.5)
    gamma = rng.uniform(0.7, 3.0)
    below = np.clip((y - horizon) / (1 - horizon), 0, 1)
    ground = np.where(y < horizon, 1.0, (1 - below) ** gamma)
    cells = max(2, round(min(gh, gw) / rng.uniform(6, 16)))
    noise = rng.standard_normal((gh, gw))
    field = ndimage.gaussian_filter(noise, sigma=min(gh, gw) / cells, mode="reflect")
    seeds = rng.uniform(0, 1, (int(rng.integers(2, 6)), 2))
    owner = np.argmin((y[..., None] - seeds[:, 0]) ** 2 + (x[..., None] - seeds[:, 1]) ** 2, -1)
    slopes = rng.uniform(-0.5, 0.5, (len(seeds), 2)) + np.array([-0.6, 0.0])  # farther upward
    planes = rng.uniform(0, 1, len(seeds))[owner] + slopes[owner, 0] * y + slopes[owner, 1] * x
    mix = rng.dirichlet([3.0, 1.5, 1.5])
    depth = sum(m * _normalize(p) for m, p in zip(mix, (ground, field, planes)))
    near, power = rng.uniform(0.0, 0.15), rng.uniform(1.0, 2.0)  # power > 1: most of it is near
    _record(params, horizon=float(np.mean(horizon)), mix=mix.tolist(), near=near, power=power)
    shape = np.clip(_normalize(_upsample(depth, h, w)), 0, 1) ** power
    return (near + (1 - near) * shape).astype(np.float32)


def _airlight(
    rng: np.random.Generator, low: float, high: float, tint: float
) -> npt.NDArray[np.float32]:
    """Grey-white airlight with a tint between yellow (-) and blue (+)."""
    level, hue = rng.uniform(low, high), rng.uniform(-1, 1) * tint
    shift = np.array([-hue, -0.3 * hue, hue]) if hue > 0 else np.array([-hue, -hue, hue])
    return np.clip(level + shift, 0, 1).astype(np.float32)


def _scatter(image: FloatImage, depth: FloatImage, beta: float, airlight: np.ndarray) -> FloatImage:
    t = np.exp(np.float32(-beta) * depth)[..., None]
    return image * t + airlight * (1 - t)


def add_haze(
    clean: FloatImage,
    rng: np.random.Generator,
    depth: FloatImage | None = None,
    params: Params = None,
) -> FloatImage:
    """Haze by the scattering model on ``random_depth`` (or the given HxW ``depth`` in [0, 1])."""
    _check(clean)
    h, w = clean.shape[:2]
    if depth is None:
        depth = random_depth(h, w, rng, params)
    elif depth.shape != (h, w):
        raise ValueError(f"depth {depth.shape} does not match the image {(h, w)}")
    beta = math.exp(rng.uniform(math.log(0.6), math.log(2.5)))  # thin haze as often as thick
    airlight = _airlight(rng, 0.7, 1.0, 0.05)
    _record(params, beta=beta, airlight=airlight.tolist())
    out = _scatter(clean, depth.astype(np.float32), beta, airlight)
    return np.clip(out, 0, 1).astype(np.float32)


def _veil(
    clean: FloatImage,
    rng: np.random.Generator,
    beta: tuple[float, float],
    airlight: tuple[float, float],
    params: Params,
) -> FloatImage:
    """A light haze of near-grey airlight: rain accumulation or falling snow far away."""
    h, w = clean.shape[:2]
    b = rng.uniform(*beta)
    a = _airlight(rng, *airlight, 0.02)
    _record(params, veil_beta=b, veil_airlight=a.tolist())
    return _scatter(clean, random_depth(h, w, rng), b, a)


# --- particles and streaks ------------------------------------------------------------------

def _splat(
    shape: tuple[int, int],
    rng: np.random.Generator,
    count: int,
    angle: float,
    length: float,
    strength: tuple[float, float],
    margin: float,
) -> FloatImage:
    """Drops at random places (within ``margin`` outside too), each a tapered line, summed.

    ``length`` 0 draws points. Equivalent to convolving sparse random points with a rotated line
    kernel, at O(drops * length) rather than O(pixels * kernel) cost. A line carries about
    ``strength`` per pixel of its length (samples every 0.7 px, weighted by their spacing).
    """
    h, w = shape
    ys = rng.uniform(-margin, h + margin, count)
    xs = rng.uniform(-margin, w + margin, count)
    weights = rng.uniform(*strength, count)
    steps = max(1, math.ceil(length / 0.7))
    t = np.linspace(-0.5, 0.5, steps) if steps > 1 else np.zeros(1)
    taper = np.sqrt(np.clip(1 - (2 * t) ** 2, 0.05, 1)) * (length / steps if steps > 1 else 1.0)
    iy = np.rint(ys[:, None] + t * length * math.cos(angle)).astype(np.int64)
    ix = np.rint(xs[:, None] + t * length * math.sin(angle)).astype(np.int64)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    acc = np.bincount((iy * w + ix)[ok], (weights[:, None] * taper)[ok], minlength=h * w)
    return acc.reshape(h, w).astype(np.float32)


def add_rain(clean: FloatImage, rng: np.random.Generator, params: Params = None) -> FloatImage:
    """Rain streak layers, screened or added onto the image, optionally after a light veil."""
    _check(clean)
    h, w = clean.shape[:2]
    size = _size_factor(h, w)
    out = clean
    veil = bool(rng.random() < 0.5)
    _record(params, veil=veil)
    if veil:
        out = _veil(clean, rng, (0.05, 0.35), (0.7, 0.95), params)
    dominant = rng.uniform(-30, 30)
    rain = np.zeros((h, w), np.float32)
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        angle = dominant + rng.uniform(-5, 5)
        length = rng.uniform(10, 40) * size
        sigma = rng.uniform(0.4, 1.3)
        coverage = rng.uniform(0.01, 0.05)  # share of pixels on a streak's axis
        opacity = rng.uniform(0.2, 0.75)
        count = max(1, round(coverage * h * w / length))
        lines = _splat((h, w), rng, count, math.radians(angle), length, (0.4, 1.0), length / 2)
        layer = ndimage.gaussian_filter(lines, sigma, mode="constant")
        layer *= math.sqrt(2 * math.pi * (sigma**2 + 0.1))  # a full-strength line peaks near 1
        rain = 1 - (1 - rain) * (1 - opacity * np.clip(layer, 0, 1))
        layers.append({"angle": angle, "length": length, "sigma": sigma,
                       "coverage": coverage, "opacity": opacity})
    blend = "screen" if rng.random() < 0.5 else "add"
    _record(params, angle=dominant, layers=layers, blend=blend)
    streaks = rain[..., None]
    out = 1 - (1 - out) * (1 - streaks) if blend == "screen" else out + streaks
    return np.clip(out, 0, 1).astype(np.float32)


def add_snow(clean: FloatImage, rng: np.random.Generator, params: Params = None) -> FloatImage:
    """A light veil, then small, medium and large (defocused) flake layers, far to near."""
    _check(clean)
    h, w = clean.shape[:2]
    size = _size_factor(h, w)
    out = _veil(clean, rng, (0.1, 0.6), (0.75, 0.95), params)
    motion = bool(rng.random() < 0.5)
    angle = math.radians(rng.uniform(-45, 45))
    streak = rng.uniform(3, 12) * size
    specs = (  # name, flakes per pixel, blur sigma, opacity, streaks when moving
        ("small", (2e-3, 8e-3), (0.5, 0.9), (0.6, 0.95), True),
        ("medium", (3e-4, 1.5e-3), (1.0 * size, 1.8 * size), (0.6, 0.95), True),
        ("large", (0.0, 1.5e-4), (2.5 * size, 5.0 * size), (0.3, 0.7), False),
    )
    layers = []
    for name, density, blur, opacity_range, moves in specs:
        d, sigma = rng.uniform(*density), rng.uniform(*blur)
        opacity, gain, value = rng.uniform(*opacity_range), rng.uniform(1, 3), rng.uniform(0.85, 1)
        length = streak if motion and moves else 0.0
        margin = 3 * sigma + length
        points = _splat((h, w), rng, round(d * h * w), angle, length, (0.5, 1.0), margin)
        mask = ndimage.gaussian_filter(points, sigma, mode="constant")
        peak = 2 * math.pi * sigma**2 if length == 0 else math.sqrt(2 * math.pi) * sigma
        alpha = (opacity * np.clip(gain * peak * mask, 0, 1))[..., None]  # flat-topped blobs
        out = out * (1 - alpha) + value * alpha
        layers.append({"layer": name, "density": d, "sigma": sigma, "opacity": opacity,
                       "gain": gain, "value": value})
    _record(params, motion=motion, motion_angle=math.degrees(angle), motion_length=streak,
            layers=layers)
    return np.clip(out, 0, 1).astype(np.float32)


_GENERATORS = {"rain": add_rain, "haze": add_haze, "snow": add_snow}


def degrade(
    clean: FloatImage, weather: str, rng: np.random.Generator, params: Params = None
) -> FloatImage:
    """``add_<weather>(clean, rng, params=params)``; unknown names fail loudly."""
    if weather not in _GENERATORS:
        raise ValueError(f"unknown weather {weather!r}; known: {', '.join(WEATHERS)}")
    return _GENERATORS[weather](clean, rng, params=params)


# --- training batches -----------------------------------------------------------------------

def read_rgb(path: Path) -> FloatImage:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def load_images(bsds_root: Path, splits: Sequence[str]) -> list[FloatImage]:
    """RGB float32 images of ``bsds_root/images/<split>/*.jpg``, splits in order, names sorted."""
    folders = [bsds_root / "images" / split for split in splits]
    files = [p for folder in folders for p in sorted(folder.glob("*.jpg"))]
    if not files:
        raise FileNotFoundError(f"no images for splits {list(splits)} under {bsds_root}/images")
    return [read_rgb(p) for p in files]


def _nchw(images: list[FloatImage]) -> FloatImage:
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


class WeatherPatches:
    """Training pairs as a pure function of ``(seed, index)``, so resumed runs see the same data.

    Each patch is a random crop (reflect-padded if the image is smaller) of a random image in
    one of the 8 flip/rot90 modes, then degraded; rows ``k * per_weather`` to
    ``(k + 1) * per_weather`` hold weather ``WEATHERS[k]``.
    """

    def __init__(self, images: list[np.ndarray], patch: int, seed: int) -> None:
        if not images:
            raise ValueError("need at least one image")
        for image in images:
            _check(image)
        self.images = images
        self.patch = patch
        self.seed = seed

    def _crop(self, rng: np.random.Generator) -> FloatImage:
        image = self.images[int(rng.integers(len(self.images)))]
        p = self.patch
        ph, pw = max(0, p - image.shape[0]), max(0, p - image.shape[1])
        if ph or pw:
            pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
            image = np.pad(image, pad, mode="reflect")
        top = int(rng.integers(image.shape[0] - p + 1))
        left = int(rng.integers(image.shape[1] - p + 1))
        mode = int(rng.integers(8))
        crop = np.rot90(image[top:top + p, left:left + p], k=mode // 2)
        return np.ascontiguousarray(crop[::-1] if mode % 2 else crop)

    def batch(self, index: int, per_weather: int) -> tuple[FloatImage, FloatImage]:
        """(clean, degraded), both float32 ``(3 * per_weather, 3, P, P)``."""
        rng = np.random.default_rng([self.seed, index])
        clean, degraded = [], []
        for weather in WEATHERS:
            for _ in range(per_weather):
                crop = self._crop(rng)
                clean.append(crop)
                degraded.append(degrade(crop, weather, rng))
        return _nchw(clean), _nchw(degraded)


# --- the held-out test set and the example grid ---------------------------------------------
