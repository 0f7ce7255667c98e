"""Model loading: tiles sized by measured speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings
from service.tiling import MIN_TILE_OVERLAPS
from tests.conftest import BoxEngine, serve, write_fake_manifest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("batch_seconds", [0.0, 0.5])
async def test_tiles_are_sized_by_the_time_budget_at_load(tmp_path: Path, batch_seconds: float) -> None:
    """A model that needs at least 50 ms per batch runs at most 16384 px / 0.05 s; half a second of
    that is at most 405 px square, so its tiles shrink from 1024 to the 64 px grid below (or to the
    floor of four overlaps). With the budget off, RESTORE_TILE_SIZE is used."""
    root = write_fake_manifest(tmp_path, [{"name": "slow", "overlap": 20}])
    settings = Settings(models_dir=root, batch_seconds=batch_seconds, tile_overlap=16)
    async with serve(settings, lambda spec: BoxEngine(delay=0.05)) as client:
        tile = (await client.get("/v1/models")).json()["models"][0]["tile"]
    if batch_seconds == 0:
        assert tile["size"] == 1024
    else:
        assert round_up_64(MIN_TILE_OVERLAPS * tile["overlap"]) <= tile["size"] <= 384


def round_up_64(value: int) -> int:
    return -(-value // 64) * 64

