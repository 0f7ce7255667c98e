"""Model outputs back to pixels: the one rounding rule of the project.

A network's output is float, nominally in [0, 1]; a client receives integers. ``to_pixels`` is the
only place that conversion happens, for the service's responses and for every evaluation, so a
figure in the manifest describes the bytes the service sends. (Quantizing a *model* to int8 is
another thing, ``export.quantize``.)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from restore.core.types import ImageArray


def to_pixels(
    values: npt.NDArray[np.floating], dtype: type[np.uint8] | type[np.uint16] | np.dtype = np.uint8, *, overwrite: bool = False
) -> ImageArray:
    """Clip ``values`` to [0, 1], scale to ``dtype``'s range and round half up.

    ``overwrite=True`` works in place on ``values`` (a float32 output the caller no longer needs),
    which keeps a large image's peak memory to the output plus the result.
    """
    max_value = float(np.iinfo(dtype).max)
    work = values if overwrite else values.copy()
    np.clip(work, 0.0, 1.0, out=work)
    work *= max_value
    work += 0.5
    return work.astype(dtype)
