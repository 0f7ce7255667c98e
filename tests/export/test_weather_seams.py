"""No seams: a photo larger than a tile comes back from the weather model as if run whole.

The weather model's output depends on context far beyond its manifest margin (the haze path reads
the sky across the whole tile), so neighbouring tiles disagree a little in flat regions; a
cross-fade narrower than that disagreement shows it as a straight step along the seam. This
renders a hazy 1280x640 scene (a sky gradient over textured ground: two tiles of the service's
smallest weather tile), runs the committed file whole and through the service's tiling with the
manifest's margin, cross-fade and smallest tile under each route's label, and bounds the seam
step (``export.weather.seam_step``) at the export's ``MAX_SEAM_STEP``. The same image with the
tiling served until 2026-12-08 (margin 32, cross-fade 16) steps past the bound (1.15 levels per
pixel under ``unknown``, 0.54 under ``haze``). Rain and snow leave the sky nearly alone (0.11 with
the old tiling too), so their runs are in ``make test-all`` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from scipy import ndimage

from export.session import tiled_forward
from export.weather import MAX_SEAM_STEP, condition_feed, seam_step, whole_forward
from restore.core.pixels import to_pixels as quantize
from restore.core.tiling import DEFAULT_TILE

ONNX_DIR = Path(__file__).resolve().parents[2] / "models" / "onnx"
ENTRY = next(e for e in json.loads((ONNX_DIR / "manifest.json").read_text())["models"] if e["task"] == "weather")
HEIGHT, WIDTH = 640, 1280


def hazy_scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy = np.mgrid[0:HEIGHT, 0:WIDTH][0] / HEIGHT
    sky = np.stack([0.45 + 0.3 * yy, 0.6 + 0.25 * yy, 0.85 + 0.1 * yy], -1)
    ground = 0.35 + ndimage.gaussian_filter(rng.normal(0, 0.25, (HEIGHT, WIDTH, 3)), (3, 3, 0))
    clouds = ndimage.gaussian_filter(rng.normal(0, 0.03, (HEIGHT, WIDTH)), 8)[..., None]
    scene = np.where(yy[..., None] < 0.55, sky, ground) + clouds
    transmission = 0.35 + 0.5 * yy[..., None]
    return quantize(scene * transmission + 0.85 * (1 - transmission))


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(ONNX_DIR / ENTRY["file"]), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return hazy_scene()


class Wholes(dict[str, np.ndarray]):
    """Whole-image outputs by label, each computed once, when first asked for: every tiling's reference."""

    def __init__(self, session: ort.InferenceSession, scene: np.ndarray) -> None:
        super().__init__()
        self.session, self.scene = session, scene

    def __missing__(self, label: str) -> np.ndarray:
        self[label] = quantize(whole_forward(self.session, self.scene, label))
        return self[label]


@pytest.fixture(scope="module")
def wholes(session: ort.InferenceSession, scene: np.ndarray) -> Wholes:
    return Wholes(session, scene)


def test_the_measure_sees_a_step_and_not_a_ramp() -> None:
    flat = np.full((64, 64, 3), 128, np.uint8)
    step = flat.copy()
    step[:, 32:] += 2
    ramp = (flat + np.linspace(0, 2, 64)[None, :, None]).astype(np.uint8)
    assert seam_step(flat, flat) == 0.0
    assert seam_step(step, flat) > 0.2 > seam_step(ramp, flat)


@pytest.mark.skipif(not ENTRY.get("weather_labels"), reason="model 2 has no labels and no measured cross-fade")
@pytest.mark.parametrize("label", [pytest.param("rain", marks=pytest.mark.slow), "haze",
                                   pytest.param("snow", marks=pytest.mark.slow), "unknown"])
def test_a_photo_larger_than_a_tile_has_no_seams(
    session: ort.InferenceSession, scene: np.ndarray, wholes: Wholes, label: str
) -> None:
    # the service's tile: RESTORE_TILE_SIZE's default, which the entry's min_tile keeps on a CPU too
    tiled = quantize(tiled_forward(session, ENTRY, DEFAULT_TILE, scene, condition_feed(session, label)))
    assert seam_step(tiled, wholes[label]) <= MAX_SEAM_STEP


@pytest.mark.skipif(not ENTRY.get("weather_labels"), reason="model 2 has no labels and no measured cross-fade")
def test_the_old_narrow_cross_fade_shows_a_seam(
    session: ort.InferenceSession, scene: np.ndarray, wholes: Wholes
) -> None:
    old = {**ENTRY, "overlap": 32, "feather": 16}
    tiled = quantize(tiled_forward(session, old, DEFAULT_TILE, scene, condition_feed(session, "unknown")))
    assert seam_step(tiled, wholes["unknown"]) > MAX_SEAM_STEP
