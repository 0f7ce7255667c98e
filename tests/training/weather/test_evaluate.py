"""The held-out evaluation's no-harm figures: clean photos through a method, and flat regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from training.weather import evaluate as ev


def _write_testset(root: Path, count: int = 3, side: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    names, cleans = [f"im{i}" for i in range(count)], []
    for folder in ("rain", "haze", "snow", "clean"):
        (root / folder).mkdir(parents=True)
    for name in names:
        clean = np.full((side, side, 3), 120, np.uint8)
        clean[:, side // 2:] = rng.integers(0, 256, (side, side - side // 2, 3))  # right half textured
        cleans.append(clean)
        Image.fromarray(clean).save(root / "clean" / f"{name}.png")
        for weather in ("rain", "haze", "snow"):
            Image.fromarray(np.clip(clean.astype(int) + 30, 0, 255).astype(np.uint8)).save(root / weather / f"{name}.png")
    (root / "testset.json").write_text(json.dumps({"images": names}))
    return cleans


def test_flat_mask_finds_the_flat_half_only() -> None:
    x = np.full((40, 40, 3), 0.5, np.float32)
    x[:, 20:] = np.random.default_rng(1).random((40, 20, 3))
    mask = ev.flat_mask(x)
    assert mask[:, :12].all() and not mask[:, 24:].any()


def test_flat_errors_pool_over_photos_and_a_photo_without_flat_pixels_counts_nothing() -> None:
    ref = np.zeros((4, 4, 3), np.uint8)
    out = ref.copy()
    out[0, 0, 0] = 10
    none = ev.flat_errors(out, ref, np.zeros((4, 4), bool))
    assert none == (0.0, 0)
    some = ev.flat_errors(out, ref, np.ones((4, 4), bool))
    assert some == (100.0, 48)
    assert ev.pooled_psnr([none, some]) == ev.pooled_psnr([some])
    assert np.isnan(ev.pooled_psnr([none])) and ev.pooled_psnr([(0.0, 5)]) == float("inf")


def test_a_pattern_on_flat_regions_costs_flat_psnr_more_than_psnr(tmp_path: Path) -> None:
    _write_testset(tmp_path)

    def grid(x: np.ndarray) -> np.ndarray:  # a faint periodic grid, the artefact the issue reported
        out = x.copy()
        out[::8, :, :] += 6 / 255
        return out

    scores = ev.evaluate({"grid": {ev.CLEAN: grid, "rain": lambda x: x}}, tmp_path)
    clean = scores["grid"][ev.CLEAN]
    assert clean["count"] == 3 and "flat_psnr" in clean
    assert clean["flat_psnr"] < 45 and np.isfinite(clean["psnr"])
    assert "flat_psnr" not in scores["grid"]["rain"]
    assert scores["grid"]["rain"]["psnr"] < 25  # the identity on the +30 "rain" is scored against the clean image


def test_the_clean_figure_shows_input_output_and_difference(tmp_path: Path) -> None:
    _write_testset(tmp_path / "set")
    path = ev.clean_figure(tmp_path / "set", lambda x: x * 0.9, tmp_path / "fig.jpg")
    with Image.open(path) as im:
        assert im.size == (120, 40)
        diff = np.asarray(im)[:, 80:]
    assert np.abs(diff.astype(int) - 128).max() > 40  # a 10% darkening, amplified x8, is visible
