"""The type vocabulary of pixels, tiles and models, shared by the ground floor and everything above it
(one place, as in starlette/types.py); the HTTP-only names live in ``restore.service.types``."""

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

#: What a model does; the manifest's ``task`` field and the endpoint that serves it.
Task = Literal["denoise", "edges", "weather"]
