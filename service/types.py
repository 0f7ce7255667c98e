"""The type vocabulary shared by the service modules (one place, as in starlette/types.py)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

#: Decoded pixels, height x width x channels, uint8 or uint16, exactly as the file stored them.
ImageArray = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
#: One model input or output tile: channels x height x width, float32 in [0, 1].
Tile = npt.NDArray[np.float32]
#: A stack of same-shaped tiles: batch x channels x height x width, float32.
Batch = npt.NDArray[np.float32]
#: Per-pixel blending weights along one axis of a tile.
Weights1D = npt.NDArray[np.float32]
#: Blending weights of one tile, height x width.
Weights2D = npt.NDArray[np.float32]

Task = Literal["denoise", "edges", "weather"]
#: /denoise's noise level: a model's sigma, "auto" (estimated per image), or None (the blind model).
Sigma = float | Literal["auto"] | None
OutputFormat = Literal["png", "jpeg", "webp", "tiff"]
Device = Literal["auto", "cuda", "cpu"]
