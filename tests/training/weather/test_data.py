"""training/weather/data.py and testset.py: generators, depth maps, training batches, the test set."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import training.weather.data as wd
import training.weather.testset as wt
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels
from training.weather.data import (
    STATS,
    WEATHERS,
    WeatherPatches,
    add_haze,
    add_rain,
    add_snow,
    degrade,
    load_images,
    random_depth,
)
from training.weather.testset import load_test_set, write_grid, write_test_set


def textured(h: int, w: int, seed: int = 0, level: float = 0.45) -> np.ndarray:
    """A mid-grey, slightly coloured texture with every value below 0.6 (under any airlight)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = level + 0.1 * np.sin(x / 5) * np.cos(y / 7)
    planes = np.stack([base + 0.04 * c for c in (-1, 0, 1)], axis=-1)
    return np.clip(planes + rng.normal(0, 0.02, (h, w, 3)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("weather", WEATHERS)
def test_generators_are_deterministic_and_seed_dependent(weather: str) -> None:
    clean = textured(40, 56)
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    a = degrade(clean, weather, np.random.default_rng(7), first)
    b = degrade(clean, weather, np.random.default_rng(7), second)
    np.testing.assert_array_equal(a, b)
    assert first == second and first
    others = [degrade(clean, weather, np.random.default_rng(s)) for s in (8, 9)]
    assert all(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("weather", WEATHERS)
@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (96, 24)])
def test_output_shape_dtype_range(weather: str, shape: tuple[int, int]) -> None:
    clean = textured(*shape)
    for seed in range(3):
        out = degrade(clean, weather, np.random.default_rng(seed))
        assert out.shape == clean.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    extremes = np.zeros((20, 30, 3), np.float32), np.ones((20, 30, 3), np.float32)
    for clean in extremes:
        out = degrade(clean, weather, np.random.default_rng(0))
        assert out.min() >= 0 and out.max() <= 1


def test_bad_inputs_fail_loudly() -> None:
    with pytest.raises(ValueError, match="unknown weather"):
        degrade(textured(8, 8), "fog", np.random.default_rng(0))
    with pytest.raises(ValueError, match="float32"):
        add_rain(textured(8, 8).astype(np.float64), np.random.default_rng(0))
    with pytest.raises(ValueError, match="HxWx3"):
        add_snow(np.zeros((8, 8), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="depth"):
        add_haze(textured(8, 8), np.random.default_rng(0), depth=np.zeros((8, 9), np.float32))


def test_random_depth_is_a_normalized_smooth_map() -> None:
    for seed in range(5):
        depth = random_depth(60, 90, np.random.default_rng(seed))
        assert depth.shape == (60, 90) and depth.dtype == np.float32
        assert 0 <= depth.min() <= 0.15 + 1e-6 and depth.max() == pytest.approx(1, abs=1e-6)
        assert np.abs(np.diff(depth, axis=0)).max() < 0.25  # no cliffs: haze varies slowly
    np.testing.assert_array_equal(random_depth(30, 20, np.random.default_rng(3)),
                                  random_depth(30, 20, np.random.default_rng(3)))


def test_haze_is_the_scattering_model() -> None:
    clean = textured(32, 48)
    depth = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (32, 1))
    params: dict[str, Any] = {}
    out = add_haze(clean, np.random.default_rng(4), depth=depth, params=params)
    assert 0.6 <= params["beta"] <= 2.5
    airlight = np.array(params["airlight"], np.float32)
    assert ((airlight >= 0.65) & (airlight <= 1.0)).all() and np.ptp(airlight) <= 0.1
    t = np.exp(-params["beta"] * depth)[..., None]
    np.testing.assert_allclose(out, clean * t + airlight * (1 - t), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[:, 0], clean[:, 0], atol=1e-6)  # depth 0: no haze


def test_haze_lowers_contrast_and_lifts_dark_pixels_toward_the_airlight() -> None:
    clean = textured(48, 48)
    clean[10:20, 10:20] = 0.02
    for seed in range(4):
        params: dict[str, Any] = {}
        out = add_haze(clean, np.random.default_rng(seed), params=params)
        assert out.std() < clean.std()
        dark = out[10:20, 10:20]
        assert (dark > 0.02).all()
        assert (dark <= np.array(params["airlight"]) + 1e-6).all()


@pytest.mark.parametrize("weather", ["rain", "snow"])
def test_rain_and_snow_only_brighten(weather: str) -> None:
    clean = textured(96, 96, level=0.35)
    for seed in range(4):
        out = degrade(clean, weather, np.random.default_rng(seed))
        assert (out >= clean - 1e-6).all()  # streaks, flakes and veils are all brighter than 0.6
        assert out.mean() > clean.mean()


def test_snow_adds_near_white_particles() -> None:
    clean = np.full((96, 96, 3), 0.1, np.float32)
    for seed in range(4):
        params: dict[str, Any] = {}
        out = add_snow(clean, np.random.default_rng(seed), params)
        white = (out.min(axis=2) > 0.7).mean()
        assert 0.0005 < white < 0.3
        assert all(0.85 <= layer["value"] <= 1 for layer in params["layers"])
        assert len(params["layers"]) == 3


def test_rain_streaks_follow_the_recorded_angle() -> None:
    clean = np.zeros((128, 128, 3), np.float32)
    for seed in range(4):
        params: dict[str, Any] = {}
        out = add_rain(clean, np.random.default_rng(seed), params)[..., 0].astype(np.float64)
        gy, gx = np.gradient(out)
        cross = np.mean(gy * gx)
        tensor = np.array([[np.mean(gy * gy), cross], [cross, np.mean(gx * gx)]])
        along = np.linalg.eigh(tensor)[1][:, 0]  # least change: the streak direction (row, column)
        angle = math.degrees(math.atan2(along[1], along[0]))
        angle = (angle + 90) % 180 - 90
        layer_angles = [layer["angle"] for layer in params["layers"]]
        assert min(layer_angles) - 5 < angle < max(layer_angles) + 5
        assert all(abs(a - params["angle"]) <= 5 and abs(a) <= 35 for a in layer_angles)
        assert all(10 * 0.7 <= layer["length"] <= 40 for layer in params["layers"])


@pytest.mark.parametrize("weather", WEATHERS)
def test_mean_change_within_documented_bounds(weather: str) -> None:
    low, high = STATS[weather]["mean_abs"]
    clean = textured(96, 96, seed=1)
    for seed in range(6):
        out = degrade(clean, weather, np.random.default_rng(seed))
        assert low <= float(np.abs(out - clean).mean()) <= high


def _tagging_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    def tag(value: float) -> Any:
        def generator(clean: np.ndarray, rng: np.random.Generator, params: Any = None) -> Any:
            rng.random()
            return np.full_like(clean, value)
        return generator
    monkeypatch.setattr(wd, "_GENERATORS", {w: tag(0.1 * (k + 1)) for k, w in enumerate(WEATHERS)})


def test_weather_patches_order_shapes_and_crops(monkeypatch: pytest.MonkeyPatch) -> None:
    _tagging_generators(monkeypatch)
    images = [np.random.default_rng(i).random((40 + 9 * i, 50, 3), np.float32) for i in range(3)]
    clean, degraded = WeatherPatches(images, 24, seed=5).batch(3, per_weather=4)
    assert clean.shape == degraded.shape == (12, 3, 24, 24)
    assert clean.dtype == degraded.dtype == np.float32
    for k in range(3):
        np.testing.assert_array_equal(degraded[4 * k:4 * (k + 1)], np.float32(0.1 * (k + 1)))
    for patch in clean.transpose(0, 2, 3, 1):  # every patch is a flipped/rotated window of an image
        found = False
        for mode in range(8):
            undone = patch[::-1] if mode % 2 else patch
            undone = np.rot90(undone, k=-(mode // 2))
            for image in images:
                hits = np.argwhere((image == undone[0, 0]).all(axis=-1))
                for top, left in hits:
                    window = image[top:top + 24, left:left + 24]
                    found |= window.shape == undone.shape and np.array_equal(window, undone)
        assert found


def test_weather_patches_are_a_pure_function_of_seed_and_index() -> None:
    images = [textured(50, 70, seed=i) for i in range(2)]
    a = WeatherPatches(images, 32, seed=1).batch(7, per_weather=2)
    b = WeatherPatches(images, 32, seed=1).batch(7, per_weather=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], WeatherPatches(images, 32, seed=1).batch(8, per_weather=2)[1])
    assert not np.array_equal(a[1], WeatherPatches(images, 32, seed=2).batch(7, per_weather=2)[1])


def test_weather_patches_pad_small_images() -> None:
    clean, degraded = WeatherPatches([textured(20, 30)], 48, seed=0).batch(0, per_weather=1)
    assert clean.shape == degraded.shape == (3, 3, 48, 48)
    assert 0 <= degraded.min() and degraded.max() <= 1


def fake_bsds(root: Path, count: int = 6, size: tuple[int, int] = (40, 56)) -> Path:
    """BSDS500-like folders of small JPEGs: images/{train,val,test}/<id>.jpg."""
    for s, split in enumerate(("train", "val", "test")):
        folder = root / "images" / split
        folder.mkdir(parents=True)
        for i in range(count):
            image = (textured(*size, seed=10 * s + i, level=0.2 + 0.05 * i) * 255).astype(np.uint8)
            name = f"{1000 * (s + 1) + 7 * (count - i)}.jpg"  # names sort against creation order
            Image.fromarray(image).save(folder / name, quality=90)
    return root


def test_load_images_order_and_format(tmp_path: Path) -> None:
    root = fake_bsds(tmp_path / "bsds", count=3)
    images = load_images(root, ["train", "val"])
    assert len(images) == 6
    for position, (split, index) in enumerate([("train", 0), ("val", 2)], start=0):
        path = sorted((root / "images" / split).glob("*.jpg"))[index]
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB"), np.float32) / 255
        np.testing.assert_array_equal(images[3 * position + index], expected)
    assert all(i.dtype == np.float32 and i.shape == (40, 56, 3) for i in images)
    with pytest.raises(FileNotFoundError):
        load_images(root, ["nope"])


def test_test_set_round_trip_and_idempotence(tmp_path: Path) -> None:
    root = fake_bsds(tmp_path / "bsds")
    out = tmp_path / "testset"
    meta = write_test_set(root, out, count=4, seed=11)
    record = json.loads(meta.read_text())
    assert (record["seed"], record["count"], record["version"]) == (11, 4, wt.TESTSET_VERSION)
    names = list(record["images"])
    assert names == sorted(names) and len(names) == 4
    assert {f"{n}.jpg" for n in names} <= {p.name for p in (root / "images" / "test").iterdir()}
    for weather in WEATHERS:
        items = load_test_set(out, weather)
        assert [n for n, _, _ in items] == names
        for name, degraded, clean in items:
            assert degraded.shape == clean.shape == (40, 56, 3) and degraded.dtype == np.float32
            with Image.open(root / "images" / "test" / f"{name}.jpg") as image:
                jpg = np.asarray(image.convert("RGB"))
            np.testing.assert_array_equal(clean, jpg.astype(np.float32) / 255)
            entry = record["images"][name][weather]
            assert entry["psnr"] == pytest.approx(psnr(to_pixels(degraded), to_pixels(clean)), abs=1e-3)
            assert entry["params"]
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert write_test_set(root, out, count=4, seed=11) == meta
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    again = write_test_set(root, tmp_path / "again", count=4, seed=11)
    assert json.loads(again.read_text())["images"] == record["images"]
    write_test_set(root, out, count=3, seed=11)  # a different set replaces the record
    replaced = json.loads(meta.read_text())
    assert replaced["count"] == 3
    for folder in ("clean", *WEATHERS):
        assert sorted(p.stem for p in (out / folder).glob("*.png")) == list(replaced["images"])


def test_cli_and_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_bsds(tmp_path / "bsds", count=5)
    wt.main(["testset", "--bsds", str(root), "--out", str(tmp_path / "t"), "--count", "3"])
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == set(WEATHERS)
    grid = write_grid(root, tmp_path / "grid.jpg", rows=2, tile_width=64, count=3)
    with Image.open(grid) as image:
        assert image.size == (4 * 64, 2 * round(64 * 40 / 56)) and image.format == "JPEG"
    with pytest.raises(ValueError):
        write_test_set(root, tmp_path / "too-many", count=9)
