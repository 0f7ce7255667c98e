"""Image folders and files as every DnCNN recipe reads them: uint8, gray (H x W) or RGB (H x W x 3),
sorted by name, so training, evaluation and the test-set builders see the same pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["load_images", "load_set"]


def load_set(folder: Path, channels: int, limit: int | None) -> list[tuple[str, np.ndarray]]:
    """(filename, uint8 HxW or HxWx3) for the PNG/BMP/TIF images of a folder, sorted by name."""
    suffixes = {".png", ".bmp", ".tif", ".jpg"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    files = files[:limit] if limit else files
    mode = "L" if channels == 1 else "RGB"
    return [(p.name, np.asarray(Image.open(p).convert(mode))) for p in files]


def load_images(files: Sequence[Path], channels: int) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 image) of explicit files, read as gray or RGB like ``load_set``."""
    mode = "L" if channels == 1 else "RGB"
    return [(p.name, np.asarray(Image.open(p).convert(mode))) for p in files]
