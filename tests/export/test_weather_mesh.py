"""No mesh: the served weather model leaves flat skies flat, through every route.

Model 2 printed a regular 4-pixel pattern into flat regions (PixelShuffle upsampling gave each
sub-pixel phase its own filter). This renders a smooth sky gradient and the same sky with faint
cloud texture, runs the committed ONNX file through the service's tiling under each route's
label, and measures the 9x9 high-pass of the luminance of (output - input), RMS in 8-bit units,
over the image's interior: an identity model that only rounds to 8 bit scores about 0.2; the
served 2.0 scored 2.25. The bound, 0.6, is three times rounding: a faint smooth colour shift
passes, a printed texture does not.

While the served file is model 2 (no ``weather`` input) the route test is a strict expected
failure: the defect is known and measured (issue 28), and the mark turns into a failure the day a
file without the mesh is served without removing it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from scipy import ndimage

from export.session import tiled_forward
from restore.core.pixels import to_pixels as quantize
from restore.core.tiling import DEFAULT_TILE
from export.weather import condition_feed

ONNX_DIR = Path(__file__).resolve().parents[2] / "models" / "onnx"
ENTRY = next(e for e in json.loads((ONNX_DIR / "manifest.json").read_text())["models"] if e["task"] == "weather")
ROUTES = ("rain", "haze", "snow", None)  # None: ?weather=auto
BOUND = 0.6
HAS_MESH = not ENTRY.get("weather_labels")  # model 2: PixelShuffle upsampling, blind
SIDE = 320


def skies() -> dict[str, np.ndarray]:
    yy = np.mgrid[0:SIDE, 0:SIDE][0] / SIDE
    gradient = np.stack([0.45 + 0.3 * yy, 0.6 + 0.25 * yy, 0.85 + 0.1 * yy], -1)
    clouds = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 0.04, (SIDE, SIDE)), 6)[..., None]
    return {"gradient": quantize(gradient), "textured": quantize(gradient + clouds)}


def mesh_rms(out: np.ndarray, image: np.ndarray) -> float:
    difference = (out.astype(np.float64) - image.astype(np.float64)).mean(axis=2)
    high_pass = difference - ndimage.uniform_filter(difference, 9)
    inner = high_pass[16:-16, 16:-16]
    return float(np.sqrt(np.mean(inner**2)))


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(ONNX_DIR / ENTRY["file"]), providers=["CPUExecutionProvider"])


def test_rounding_alone_scores_near_the_floor() -> None:
    """The measure itself: an identity that rounds stays far under the bound; a 4 px pattern of
    one 8-bit level's amplitude does not."""
    image = skies()["textured"]
    assert mesh_rms(image, image) == 0.0
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    pattern = (((yy // 2) + (xx // 2)) % 2 * 2 - 1)[..., None]  # +-1 level, 4 px period
    assert mesh_rms(np.clip(image.astype(int) + pattern, 0, 255), image) > BOUND


@pytest.mark.xfail(HAS_MESH, strict=True, reason="the served model 2 prints a 4 px mesh (issue 28)")
@pytest.mark.parametrize("sky", ["gradient", "textured"])
@pytest.mark.parametrize("label", ROUTES, ids=[str(r) for r in ROUTES])
def test_flat_skies_stay_flat_through_every_route(session: ort.InferenceSession, sky: str, label: str | None) -> None:
    image = skies()[sky]
    out = quantize(tiled_forward(session, ENTRY, DEFAULT_TILE, image, condition_feed(session, label)))
    assert mesh_rms(out, image) <= BOUND
