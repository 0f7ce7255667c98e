"""An exported ONNX file run as the service runs it, for the export checks and the evaluations:
a CPU session (with the service's session entries for this CPU: an int8 file sums as served,
``restore.core.cpu``), and one image through the service's tiling (``restore.core.tiling``) with
the manifest entry's margin and size multiple. Nothing here imports PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from restore.core.cpu import cpu_int8_flags, session_entries
from restore.core.tiling import DEFAULT_FEATHER, plan_tiles, run_tiled

__all__ = ["cpu_session", "tiled_forward"]


def cpu_session(model: str | Path | bytes, threads: int, entries: dict[str, str] | None = None) -> ort.InferenceSession:
    """A CPU session of ``model`` (a file, or a serialized model) on ``threads`` cores (one operator
    at a time), the setting evaluations are timed with. ``entries``: ORT session config entries;
    default the service's for this CPU (``restore.core.cpu.session_entries``)."""
    options = ort.SessionOptions()
    for key, value in (session_entries(cpu_int8_flags()) if entries is None else entries).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"])


def tiled_forward(
    session: ort.InferenceSession, entry: dict[str, Any], tile_size: int, rgb: npt.NDArray[np.uint8],
    extra: dict[str, np.ndarray] | None = None,
) -> npt.NDArray[np.float32]:
    """``rgb`` (H, W, 3 uint8) through ``session`` in tiles of side ``tile_size`` with the entry's
    ``overlap`` (receptive-field margin), ``feather`` (as ``ModelSpec.feather_for``) and ``multiple``,
    blended as the service blends: (H, W, outputs).
    ``extra``: more inputs of one row each, given with every tile (a conditioned model's ``weather``)."""
    height, width = rgb.shape[:2]
    plan = plan_tiles(height, width, tile=tile_size, margin=int(entry["overlap"]),
                      feather=max(DEFAULT_FEATHER, int(entry.get("feather", 0))),
                      multiple=max(1, int(entry["multiple"])))
    return run_tiled(lambda tile: session.run(["output"], {"input": tile[None], **(extra or {})})[0][0], rgb, plan)
