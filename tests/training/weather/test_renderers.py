"""training/weather/renderers.py: every renderer keeps the data contract and its documented
strength; draws are deterministic; clean samples only pass through the camera model."""

from __future__ import annotations

import numpy as np
import pytest

from training.weather import renderers as R


def _texture(size: int = 96, seed: int = 0) -> np.ndarray:
    """A mid-grey texture: the renderers' effect is measurable against it."""
    rng = np.random.default_rng(seed)
    base = 0.45 + 0.1 * rng.random((size // 8, size // 8, 3))
    return np.kron(base, np.ones((8, 8, 1))).astype(np.float32)


ALL = [R.depth_rain, R.noise_rain, R.heavy_rain, R.drops, R.varied_haze, R.textured_snow, R.mask_snow]
#: mean |degraded - clean| over seeds on the texture: (lowest mean, highest mean) accepted.
STRENGTH = {
    "depth_rain": (0.005, 0.25), "noise_rain": (0.005, 0.25), "heavy_rain": (0.1, 0.5), "drops": (0.003, 0.25),
    "varied_haze": (0.02, 0.45), "textured_snow": (0.005, 0.3), "mask_snow": (0.005, 0.3),
}


@pytest.mark.parametrize("renderer", ALL, ids=lambda f: f.__name__)
def test_contract_shape_range_determinism(renderer: R.Renderer) -> None:
    clean = _texture()
    out = renderer(clean, np.random.default_rng(3))
    again = renderer(clean, np.random.default_rng(3))
    assert out.dtype == np.float32 and out.shape == clean.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, renderer(clean, np.random.default_rng(4)))


@pytest.mark.parametrize("renderer", ALL, ids=lambda f: f.__name__)
def test_strength_is_in_its_documented_range(renderer: R.Renderer) -> None:
    clean = _texture()
    means = [float(np.abs(renderer(clean, np.random.default_rng(s)) - clean).mean()) for s in range(12)]
    low, high = STRENGTH[renderer.__name__]
    assert low <= float(np.mean(means)) <= high, means
    assert min(means) > 0  # every draw degrades


def test_rain_brightens_and_haze_lowers_contrast() -> None:
    clean = _texture(seed=1)
    rain = R.depth_rain(clean, np.random.default_rng(0))
    assert float((rain - clean).mean()) > 0  # streaks add light
    detailed = (0.35 + 0.3 * np.random.default_rng(2).random((96, 96, 3))).astype(np.float32)
    detail = lambda image: float(np.abs(np.diff(image, axis=1)).mean())  # noqa: E731
    for seed in range(5):  # haze scales the scene's detail by t < 1 (airlight is smooth)
        assert detail(R.varied_haze(detailed, np.random.default_rng(seed))) < detail(detailed)


def test_render_draws_every_renderer_of_a_weather() -> None:
    clean = _texture(64)
    seen = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        renderers, weights = zip(*R.RENDERERS["rain"])
        seen.add(int(rng.choice(len(renderers), p=np.asarray(weights) / sum(weights))))
    assert seen == set(range(len(R.RENDERERS["rain"])))
    for weather in ("rain", "haze", "snow"):
        out = R.render(clean, weather, np.random.default_rng(0))
        assert out.shape == clean.shape and not np.array_equal(out, clean)


def test_clean_samples_only_go_through_the_camera() -> None:
    clean = _texture(64)
    diffs = [float(np.abs(R.render(clean, R.CLEAN, np.random.default_rng(s)) - clean).mean())
             for s in range(40)]
    assert max(diffs) < 0.02  # mild noise or JPEG at most
    assert min(diffs) == 0.0  # and most are untouched
    with pytest.raises(ValueError):
        R.render(clean, "fog", np.random.default_rng(0))


def test_heavy_rain_is_heavier_than_every_rain_renderer_and_trains_as_rain() -> None:
    """The heavy-rain group exists because no rain renderer reaches a storm: on every seed it
    moves the photo more than the strongest of them, and its rows carry the rain label."""
    clean = _texture()
    for seed in range(4):
        heavy = float(np.abs(R.heavy_rain(clean, np.random.default_rng(seed)) - clean).mean())
        others = [float(np.abs(f(clean, np.random.default_rng(seed)) - clean).mean()) for f in (R.depth_rain, R.noise_rain, R.drops)]
        assert heavy > max(others)
    assert R.weather_of(R.HEAVY_RAIN) == "rain" and R.weather_of("haze") == "haze"
    out = R.render(clean, R.HEAVY_RAIN, np.random.default_rng(0))
    assert out.shape == clean.shape and float(np.abs(out - clean).mean()) > 0.1
