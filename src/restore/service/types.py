"""The service's own type vocabulary: request parameters and settings values (the pixel, tile and
model names are ``restore.core.types``)."""

from __future__ import annotations

from typing import Literal

#: /denoise's noise level: a model's sigma, "auto" (estimated per image), or None (the blind model).
Sigma = float | Literal["auto"] | None
OutputFormat = Literal["png", "jpeg", "webp", "tiff"]
Device = Literal["auto", "cuda", "cpu"]
