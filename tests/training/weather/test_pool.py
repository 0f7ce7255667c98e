"""training/weather/pool.py: a pool written from generated photos; batches hold every group,
clean rows included, and are a pure function of (seed, index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.weather.pool import GROUPS, PairPool, write_pool


def test_pool_holds_every_group(pool_dir: Path) -> None:
    for group in GROUPS:
        clean = np.load(pool_dir / f"{group}_clean.npy")
        degraded = np.load(pool_dir / f"{group}_degraded.npy")
        assert clean.shape == degraded.shape == (6, 48, 48, 3) and clean.dtype == np.uint8
        if group != "clean":
            assert not np.array_equal(clean, degraded)


def test_batches_have_the_asked_rows_and_repeat_exactly(pool_dir: Path) -> None:
    pool = PairPool(pool_dir, patch=32, seed=5)
    counts = {"rain": 2, "haze": 1, "snow": 1, "clean": 2}
    clean, degraded = pool.batch(7, counts)
    assert clean.shape == degraded.shape == (6, 3, 32, 32) and clean.dtype == np.float32
    assert 0.0 <= float(clean.min()) and float(clean.max()) <= 1.0
    again = pool.batch(7, counts)
    np.testing.assert_array_equal(clean, again[0])
    np.testing.assert_array_equal(degraded, again[1])
    assert not np.array_equal(clean, pool.batch(8, counts)[0])
    # the clean rows are (nearly) their own input: camera noise/JPEG at most
    assert float(np.abs(clean[4:] - degraded[4:]).mean()) < 0.03


def test_a_patch_larger_than_the_pool_is_refused(pool_dir: Path) -> None:
    with pytest.raises(ValueError):
        PairPool(pool_dir, patch=64, seed=0)


def test_a_group_added_later_leaves_the_others_untouched(pool_dir: Path, tmp_path: Path) -> None:
    """An older pool without the heavy-rain group loads (its rows cannot be asked for, with a
    clear message); writing the pool again renders only that group, and the others keep their
    bytes; other settings are refused."""
    old = tmp_path / "pool"
    old.mkdir()
    for file in pool_dir.iterdir():
        if not file.name.startswith("rain_heavy"):
            (old / file.name).write_bytes(file.read_bytes())
    pool = PairPool(old, patch=32, seed=0)
    pool.batch(0, {"rain": 1, "clean": 1})
    with pytest.raises(ValueError, match="no rain_heavy pairs"):
        pool.batch(0, {"rain_heavy": 1})
    before = (old / "rain_degraded.npy").read_bytes()
    write_pool(pool_dir.parent, old, pairs=6, size=48, seed=1, workers=1)
    assert (old / "rain_degraded.npy").read_bytes() == before
    np.testing.assert_array_equal(np.load(old / "rain_heavy_degraded.npy"), np.load(pool_dir / "rain_heavy_degraded.npy"))
    with pytest.raises(ValueError, match="other settings"):
        write_pool(pool_dir.parent, old, pairs=7, size=48, seed=1, workers=1)
