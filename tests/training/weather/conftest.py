"""A small pool of weather pairs rendered from generated photos, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.weather.pool import write_pool


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 48 px pairs per group from two 60x80 noise photos per split (fast; pure function of seeds)."""
    root = tmp_path_factory.mktemp("bsds")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        folder = root / "images" / split
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(folder / f"{k}.jpg")
    out = root / "pool"
    write_pool(root, out, pairs=6, size=48, seed=1, workers=1)
    return out
