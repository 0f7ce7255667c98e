"""Varied weather renderers for training: several physical models per weather, so that the
network learns what rain, haze and snow do to a photo rather than the quirks of one generator.

``training.weather.data`` holds the first generator of each weather (``add_rain``, ``add_haze``,
``add_snow``); it also defines the held-out test set, so it stays as it is. This module adds
renderers that differ from those in the ways other renderers (and real weather) differ, and
``render`` draws one of them per sample with the weights in ``RENDERERS``:

* **rain** -- ``depth_rain``: 2-4 depth layers, near ones long, wide, bright and sparse, far ones
  short, thin and dense, streaks bent by up to +-25 degrees along their length and jittered in
  angle, under the heavy-rain model ``O = t (B + S) + (1 - t) A`` (Yang et al., CVPR 2017) with
  p = 0.5; ``noise_rain``: the photo-editor recipe of Rain100L/H-style sets - dense random seeds,
  smeared by a straight motion kernel of length ``U(15, 45)`` px along 1-2 directions, blurred,
  added;
  ``drops``: lens drops (discs and ellipses of radius ``U(3, 16)`` px that show a blurred,
  flipped, magnified view of what lies behind them, with a dark rim) over thin streaks.
* **haze** -- ``varied_haze``: the scattering model with the depth drawn from five priors
  (constant: uniform haze; vertical ramp; ``random_depth``; a luminance-based guess - bright and
  smooth regions far; a blend), patchy density (``beta`` times a smooth log-normal field),
  airlight that varies over the image (a vertical gradient and a smooth field) with colours from
  grey-blue to smog-yellow and levels ``U(0.55, 1.0)``, and slight forward-scattering blur.
* **snow** -- ``textured_snow``: 3-5 depth layers of flakes made of 1-4 jittered sub-points (so
  not round), sizes from 0.4 to 6 px, per-layer motion blur in its own direction, flake values
  ``U(0.65, 1)`` (snow against a bright sky is darker than the sky); ``mask_snow``: blobs cut
  from thresholded smooth noise at two or three scales (irregular shapes, as in Snow100K's
  masks), composited as a semi-transparent white-grey layer over a veil.
* **clean** -- the photo unchanged: the network must learn to leave clean regions alone.
* **heavy rain** (``HEAVY_RAIN``, a pool group of its own, trained under the rain label) --
  ``heavy_rain``: Rain100H-style storms, which none of the above reaches (our rain averages 22-23
  dB of input PSNR, the outside heavy-rain pairs 12.5): two to four directions of dense, bright,
  thick streaks and, with p = 0.8, the rain-accumulation veil of the heavy-rain model.

After rendering, ``camera`` adds with p = 0.2 mild Gaussian noise (sigma ``U(0.002, 0.015)``) and
with p = 0.25 JPEG compression at quality ``U(70, 95)`` to the degraded input only (real photos
come as JPEGs); the target stays the clean photo.
All renderers follow ``data``'s contract: float32 HxWx3 in [0, 1] in and out, a pure function
of the generator's state.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from training.weather.data import (
    WEATHERS, FloatImage, _airlight, _check, _scatter, _size_factor, _upsample, add_haze,
    add_rain, add_snow, random_depth,
)

__all__ = ["RENDERERS", "CLEAN", "HEAVY_RAIN", "render", "camera", "depth_rain", "noise_rain",
           "heavy_rain", "drops", "varied_haze", "textured_snow", "mask_snow", "weather_of"]

Renderer = Callable[[FloatImage, np.random.Generator], FloatImage]
CLEAN = "clean"
HEAVY_RAIN = "rain_heavy"


def weather_of(group: str) -> str:
    """The weather label a pool group is trained under (``HEAVY_RAIN`` is rain)."""
    return "rain" if group == HEAVY_RAIN else group


def _smooth_field(h: int, w: int, rng: np.random.Generator, cells: float) -> FloatImage:
    """A smooth random field with about ``cells`` features across the shorter side, unit std."""
    gh, gw = (max(3, round(cells)), max(3, round(cells * w / h))) if h <= w else (
        max(3, round(cells * h / w)), max(3, round(cells)))
    field = _upsample(rng.standard_normal((gh, gw)), h, w)
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


# --- rain ------------------------------------------------------------------------------------

def _bent_streaks(
    shape: tuple[int, int], rng: np.random.Generator, count: int, angle: float, length: float,
    bend: float, jitter: float,
) -> FloatImage:
    """Streaks whose direction turns by ``bend`` radians along their length, each rotated by up
    to ``jitter`` radians: sampled points, as ``data._splat``, on curved paths."""
    h, w = shape
    margin = length
    ys = rng.uniform(-margin, h + margin, count)
    xs = rng.uniform(-margin, w + margin, count)
    weights = rng.uniform(0.4, 1.0, count)
    base = angle + rng.uniform(-jitter, jitter, count)
    steps = max(2, math.ceil(length / 0.7))
    t = np.linspace(-0.5, 0.5, steps)
    theta = base[:, None] + bend * t  # the direction at each sample
    ds = length / steps
    dy, dx = np.cumsum(np.cos(theta) * ds, 1), np.cumsum(np.sin(theta) * ds, 1)
    iy = np.rint(ys[:, None] + dy - dy[:, -1:] / 2).astype(np.int64)
    ix = np.rint(xs[:, None] + dx - dx[:, -1:] / 2).astype(np.int64)
    taper = np.sqrt(np.clip(1 - (2 * t) ** 2, 0.05, 1)) * ds
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    acc = np.bincount((iy * w + ix)[ok], (weights[:, None] * taper)[ok], minlength=h * w)
    return acc.reshape(h, w).astype(np.float32)


def depth_rain(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Depth-layered, bent, jittered streaks; with p = 0.5 inside a rain-accumulation veil."""
    _check(clean)
    h, w = clean.shape[:2]
    size = _size_factor(h, w)
    angle = math.radians(rng.uniform(-35, 35))
    layers = int(rng.integers(2, 5))
    rain = np.zeros((h, w), np.float32)
    brightness = rng.uniform(0.6, 1.0)
    for depth in np.sort(rng.uniform(0, 1, layers))[::-1]:  # far to near
        near = 1.0 - depth
        length = (6 + 54 * near * rng.uniform(0.5, 1.0)) * size
        sigma = 0.3 + 1.4 * near * rng.uniform(0.5, 1.0)
        coverage = rng.uniform(0.005, 0.03) * (1.5 - near)
        opacity = (0.15 + 0.6 * near) * rng.uniform(0.6, 1.0)
        count = max(1, round(coverage * h * w / length))
        lines = _bent_streaks((h, w), rng, count, angle, length,
                              math.radians(rng.uniform(-25, 25)), math.radians(rng.uniform(0, 10)))
        layer = ndimage.gaussian_filter(lines, sigma, mode="constant")
        layer *= math.sqrt(2 * math.pi * (sigma**2 + 0.1))
        rain = 1 - (1 - rain) * (1 - opacity * np.clip(layer, 0, 1))
    out = clean + brightness * rain[..., None]
    if rng.random() < 0.5:  # Yang et al.: O = t (B + S) + (1 - t) A
        beta = rng.uniform(0.1, 0.8)
        out = _scatter(out, random_depth(h, w, rng), beta, _airlight(rng, 0.6, 0.95, 0.04))
    return np.clip(out, 0, 1).astype(np.float32)


def _line_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised motion-blur kernel: a line of ``length`` px at ``angle`` (0 = vertical)."""
    size = length | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    for s in np.linspace(-c, c, 2 * size):
        kernel[int(round(c + s * math.cos(angle))), int(round(c + s * math.sin(angle)))] = 1
    return kernel / kernel.sum()


def noise_rain(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Rain100-style streaks: dense random seeds smeared by a straight motion kernel along 1-2
    directions (untapered in look: long, uniform, unblended), blurred, added."""
    _check(clean)
    h, w = clean.shape[:2]
    out = clean.copy()
    for _ in range(int(rng.integers(1, 3))):
        length = rng.uniform(15, 45)
        count = max(1, round(rng.uniform(0.003, 0.03) * h * w))
        streaks = _bent_streaks((h, w), rng, count, math.radians(rng.uniform(-40, 40)), length,
                                0.0, 0.0) / length
        streaks = ndimage.gaussian_filter(streaks, rng.uniform(0.3, 0.8))
        streaks = streaks / (np.percentile(streaks, 99.5) + 1e-6)
        out = out + rng.uniform(0.2, 0.6) * np.clip(streaks, 0, 1.5)[..., None]
    return np.clip(out, 0, 1).astype(np.float32)


def heavy_rain(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    """A storm: 2-4 directions of dense, long, thick, bright streaks (screen-blended, so they
    saturate as real sheets of rain do) and, with p = 0.8, the accumulation veil
    ``O = t (B + S) + (1 - t) A``."""
    _check(clean)
    h, w = clean.shape[:2]
    size = _size_factor(h, w)
    rain = np.zeros((h, w), np.float32)
    base = math.radians(rng.uniform(-30, 30))
    for _ in range(int(rng.integers(2, 5))):
        length = rng.uniform(20, 60) * size
        count = max(1, round(rng.uniform(0.02, 0.06) * h * w / max(length / 8, 1)))
        streaks = _bent_streaks((h, w), rng, count, base + math.radians(rng.uniform(-15, 15)), length,
                                0.0, math.radians(rng.uniform(0, 6)))
        streaks = ndimage.gaussian_filter(streaks, rng.uniform(0.6, 1.6) * size)
        streaks = streaks / (np.percentile(streaks, 99.5) + 1e-6)
        rain = 1 - (1 - rain) * (1 - rng.uniform(0.35, 0.8) * np.clip(streaks, 0, 1))
    out = clean + rng.uniform(0.7, 1.0) * rain[..., None]
    if rng.random() < 0.8:
        out = _scatter(out, random_depth(h, w, rng), rng.uniform(0.3, 1.2), _airlight(rng, 0.6, 0.95, 0.04))
    return np.clip(out, 0, 1).astype(np.float32)


def drops(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Lens drops over light streaks: each drop shows a blurred, flipped, magnified view."""
    _check(clean)
    h, w = clean.shape[:2]
    out = noise_rain(clean, rng) if rng.random() < 0.7 else clean.copy()
    blurred = ndimage.gaussian_filter(out, (2.0, 2.0, 0))
    count = int(rng.integers(2, 3 + round(h * w / 3000)))
    for _ in range(count):
        r = rng.uniform(3, 16) * _size_factor(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        aspect = rng.uniform(0.7, 1.3)
        gain, rim_depth = rng.uniform(0.9, 1.15), rng.uniform(0.05, 0.2)
        top, bottom = max(0, int(cy - r * aspect)), min(h, int(cy + r * aspect) + 1)
        left, right = max(0, int(cx - r)), min(w, int(cx + r) + 1)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
        dist = np.sqrt(((yy - cy) / (r * aspect)) ** 2 + ((xx - cx) / r) ** 2)
        # a lens: a flipped, magnified view of the neighbourhood, a soft edge, a dark rim
        sy = np.clip(np.rint(cy - (yy - cy) * 0.5), 0, h - 1).astype(np.intp)
        sx = np.clip(np.rint(cx - (xx - cx) * 0.5), 0, w - 1).astype(np.intp)
        alpha = np.clip((1 - dist) * 4, 0, 1)[..., None]
        rim = (np.exp(-((dist - 0.9) / 0.12) ** 2) * (dist < 1))[..., None] * rim_depth
        patch = out[top:bottom, left:right]
        out[top:bottom, left:right] = patch * (1 - alpha) + blurred[sy, sx] * gain * alpha - rim
    return np.clip(out, 0, 1).astype(np.float32)


# --- haze ------------------------------------------------------------------------------------

def _depth_prior(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    h, w = clean.shape[:2]
    kind = int(rng.integers(5))
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    if kind == 0:  # uniform haze: one transmission for the whole photo
        return np.full((h, w), rng.uniform(0.5, 1.0), np.float32)
    if kind == 1:  # farther towards the top
        top = rng.uniform(0.6, 1.0)
        return np.broadcast_to(top - (top - rng.uniform(0.0, 0.4)) * y, (h, w)).astype(np.float32)
    if kind == 2:
        return random_depth(h, w, rng)
    luminance = ndimage.gaussian_filter(clean.mean(2), max(h, w) / rng.uniform(10, 30))
    guess = (luminance - luminance.min()) / (np.ptp(luminance) + 1e-6)  # bright, smooth: far
    if kind == 3:
        return (0.2 + 0.8 * guess).astype(np.float32)
    mix = rng.uniform(0.2, 0.8)
    return (mix * guess + (1 - mix) * random_depth(h, w, rng)).astype(np.float32)


def varied_haze(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Scattering model with varied depth priors, patchy density and non-uniform, coloured airlight."""
    _check(clean)
    h, w = clean.shape[:2]
    depth = _depth_prior(clean, rng)
    beta = math.exp(rng.uniform(math.log(0.3), math.log(3.0)))
    patchy = np.exp(rng.uniform(0, 0.6) * _smooth_field(h, w, rng, rng.uniform(2, 6)))
    t = np.exp(-beta * depth * patchy)[..., None].astype(np.float32)
    level = rng.uniform(0.55, 1.0)
    tint = rng.normal(0, 0.05, 3) + np.array([1, 0.6, -0.4]) * rng.uniform(-0.12, 0.12)
    y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None, None]
    airlight = (level + tint + rng.uniform(-0.15, 0.15) * y
                + rng.uniform(0, 0.05) * _smooth_field(h, w, rng, 3)[..., None])
    scene = clean
    if rng.random() < 0.5:  # forward scattering softens what is far
        scene = clean * t + ndimage.gaussian_filter(clean, (1.2, 1.2, 0)) * (1 - t)
    out = scene * t + np.clip(airlight, 0, 1) * (1 - t)
    return np.clip(out, 0, 1).astype(np.float32)


# --- snow ------------------------------------------------------------------------------------

def textured_snow(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Layers of irregular flakes (clusters of sub-points), each layer its own blur and motion."""
    _check(clean)
    h, w = clean.shape[:2]
    size = _size_factor(h, w)
    out = clean
    if rng.random() < 0.7:
        beta = rng.uniform(0.05, 0.7)
        out = _scatter(out, random_depth(h, w, rng), beta, _airlight(rng, 0.7, 0.95, 0.03))
    base_angle = math.radians(rng.uniform(-50, 50))
    for depth in np.sort(rng.uniform(0, 1, int(rng.integers(3, 6))))[::-1]:
        near = 1.0 - depth
        sigma = (0.4 + 5.5 * near**2 * rng.uniform(0.5, 1.0)) * size
        density = rng.uniform(5e-4, 6e-3) * (1.05 - near) ** 2
        count = max(1, round(density * h * w))
        parts = int(rng.integers(1, 5))
        moving = rng.random() < 0.5
        length = rng.uniform(2, 14) * size * (0.3 + near) if moving else 0.0
        angle = base_angle + math.radians(rng.uniform(-15, 15))
        points = np.zeros((h, w), np.float32)
        centres = rng.uniform(-3 * sigma, [h + 3 * sigma, w + 3 * sigma], (count, 2))
        for _ in range(parts):
            jitter = rng.normal(0, 0.8 * sigma + 0.3, (count, 2))
            points += _points((h, w), centres + jitter, rng)
        if length:
            points = ndimage.convolve(points, _line_kernel(max(3, int(length)), angle), mode="constant")
        mask = ndimage.gaussian_filter(points, sigma, mode="constant")
        peak = 2 * math.pi * sigma**2 / parts
        alpha = (rng.uniform(0.5, 0.95) * np.clip(rng.uniform(1, 3) * peak * mask, 0, 1))[..., None]
        value = rng.uniform(0.65, 1.0)
        out = out * (1 - alpha) + value * alpha
    return np.clip(out, 0, 1).astype(np.float32)


def _points(shape: tuple[int, int], centres: np.ndarray, rng: np.random.Generator) -> FloatImage:
    """Unit impulses (strength ``U(0.5, 1)``) at the given (y, x) positions inside the frame."""
    h, w = shape
    iy, ix = np.rint(centres[:, 0]).astype(np.int64), np.rint(centres[:, 1]).astype(np.int64)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    weights = rng.uniform(0.5, 1.0, len(centres))
    return np.bincount((iy * w + ix)[ok], weights[ok], minlength=h * w).reshape(h, w).astype(np.float32)


def mask_snow(clean: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Irregular blobs from thresholded smooth noise at 2-3 scales over a veil (Snow100K-like)."""
    _check(clean)
    h, w = clean.shape[:2]
    out = _scatter(clean, random_depth(h, w, rng), rng.uniform(0.05, 0.5),
                   _airlight(rng, 0.7, 0.95, 0.03))
    for scale in rng.choice([0.6, 1.0, 1.8, 3.0], int(rng.integers(2, 4)), replace=False):
        noise = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), scale)
        noise /= noise.std() + 1e-6
        threshold = rng.uniform(1.5, 2.6)
        alpha = np.clip((noise - threshold) * rng.uniform(1.5, 4.0), 0, 1)
        alpha = ndimage.gaussian_filter(alpha, rng.uniform(0.3, 1.0)) * rng.uniform(0.6, 1.0)
        out = out * (1 - alpha[..., None]) + rng.uniform(0.75, 1.0) * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32)


# --- drawing one ----------------------------------------------------------------------------

def _first(generator: Callable[..., FloatImage]) -> Renderer:
    return lambda clean, rng: generator(clean, rng)


#: Per weather, (renderer, weight): the first generators keep a third of the draws.
RENDERERS: dict[str, tuple[tuple[Renderer, float], ...]] = {
    "rain": ((_first(add_rain), 0.35), (depth_rain, 0.3), (noise_rain, 0.25), (drops, 0.1)),
    "haze": ((_first(add_haze), 0.35), (varied_haze, 0.65)),
    "snow": ((_first(add_snow), 0.35), (textured_snow, 0.4), (mask_snow, 0.25)),
}


def camera(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Mild sensor noise (p = 0.2) and JPEG compression (p = 0.25) of a degraded input."""
    if rng.random() < 0.2:
        image = np.clip(image + rng.normal(0, rng.uniform(0.002, 0.015), image.shape), 0, 1)
    if rng.random() < 0.25:
        buffer = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(
            buffer, "JPEG", quality=int(rng.integers(70, 96)))
        with Image.open(buffer) as decoded:
            image = np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255
    return image.astype(np.float32)


def render(clean: FloatImage, weather: str, rng: np.random.Generator) -> FloatImage:
    """A degraded input for ``clean``: one renderer of ``weather`` (or none for ``"clean"``,
    ``heavy_rain`` for ``HEAVY_RAIN``), drawn by weight, then ``camera``."""
    if weather == CLEAN:
        return camera(clean, rng)
    if weather == HEAVY_RAIN:
        return camera(heavy_rain(clean, rng), rng)
    if weather not in WEATHERS:
        raise ValueError(f"unknown weather {weather!r}; known: {', '.join(WEATHERS)}, {CLEAN}")
    renderers, weights = zip(*RENDERERS[weather])
    choice = int(rng.choice(len(renderers), p=np.asarray(weights) / sum(weights)))
    return camera(renderers[choice](clean, rng), rng)
