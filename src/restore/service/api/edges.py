"""POST /edges: HED edge probabilities, optionally multi-scale, thinned or thresholded, as a one-channel image."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response

from restore.core import edgemaps, multiscale
from restore.core.pixels import to_pixels
from restore.service.api.deps import MODEL_DEPENDENCIES, FormatQuery, runtime_of
from restore.service.api.openapi import IMAGE_BODY, IMAGE_RESPONSES
from restore.service.api.operation import ModelRun, Operation, image_accept, respond
from restore.service.errors import BadRequest
from restore.service.images import codecs
from restore.service.images.negotiation import choose_format
from restore.service.types import OutputFormat

router = APIRouter(dependencies=MODEL_DEPENDENCIES)

Side = Literal["fuse", "1", "2", "3", "4", "5"]


class Depth(enum.IntEnum):
    """An IntEnum, not Literal[8, 16]: the query string "16" validates as the enum, never as a Literal int."""

    EIGHT = 8
    SIXTEEN = 16


async def edges_operation(
    request: Request,
    thin: Annotated[
        bool,
        Query(description="Non-maximum suppression and thinning: one-pixel-wide edges, as edge benchmarks score them.", examples=[True]),
    ] = False,
    threshold: Annotated[
        float | None,
        Query(ge=0.0, le=1.0, description="Binary map: pixels with probability >= threshold become 255 (applied after thin).", examples=[0.5]),
    ] = None,
    side: Annotated[
        Side,
        Query(description="Which output: the learned fusion (`fuse`, default) or side output 1 (fine) to 5 (coarse).", examples=["fuse"]),
    ] = "fuse",
    depth: Annotated[
        Depth,
        Query(description="Bits per pixel, 8 or 16; 16 keeps the raw probabilities (PNG and TIFF only).", examples=[16]),
    ] = Depth.EIGHT,
    scales: Annotated[
        str | None,
        Query(
            description=(
                "Multi-scale inference: comma-separated factors (at most 4, each 0.1 to 2), e.g. `0.5,1,1.5`, the usual "
                "set. The model runs on the input resized by each factor (bilinear; tiled like any request) and the "
                "maps are resized back and averaged. Costs the sum of the squared factors times the pixels: 3.5x for "
                "0.5,1,1.5. Omitted: the input at its own size. 422 when a resized image would exceed the pixel limit."
            ),
            examples=["0.5,1,1.5"],
        ),
    ] = None,
    format: FormatQuery = None,
) -> Operation:
    """/edges' parameters (shared by POST /edges and POST /v1/jobs/edges)."""
    accept = image_accept(request)
    try:  # 422 before the body is read; sizes are checked on the header
        factors = multiscale.parse_scales(scales)
    except multiscale.InvalidScales as exc:
        raise BadRequest(str(exc)) from exc

    def unfit(fmt: OutputFormat, width: int = 1, height: int = 1) -> str | None:
        if depth == 16 and fmt not in ("png", "tiff"):
            return "depth=16 needs PNG or TIFF"
        return codecs.encode_limit(fmt, width, height, channels=1, bits=int(depth))

    choose_format(format, accept, "png", unfit=unfit)  # 422 or 406 before the body is read
    dtype = np.dtype(np.uint16) if depth == Depth.SIXTEEN else np.dtype(np.uint8)
    settings = runtime_of(request).settings

    def encode(run: ModelRun) -> bytes:
        outputs = list(run.state.spec.extra.get("outputs", ["fuse", "side1", "side2", "side3", "side4", "side5"]))
        channel = outputs.index("fuse" if side == "fuse" else f"side{side}")
        prob = np.clip(run.output[:, :, channel], 0.0, 1.0)
        if thin:
            prob = edgemaps.thin(prob)
        if threshold is not None:
            prob = edgemaps.binarize(prob, threshold).astype(np.float32)
        pixels = to_pixels(np.array(prob, dtype=np.float32)[:, :, None], dtype, overwrite=True)
        return codecs.encode(pixels, None, None, run.fmt, png_compress_level=settings.png_compress_level)

    return Operation(
        "edges",
        choose_output=lambda image: choose_format(format, accept, "png", unfit=lambda f: unfit(f, image.width, image.height)),
        encode=encode,
        scales=factors,
    )


@router.post(
    "/edges",
    summary="Detect edges (HED)",
    response_class=Response,
    responses=IMAGE_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def edges(request: Request, operation: Annotated[Operation, Depends(edges_operation)]) -> Response:
    """A one-channel map of the upright input's size: 0 = no edge, 255 (or 65535) = certain edge.

    PNG unless `format`/`Accept` ask otherwise; alpha and colour profile of the input do not apply.
    """
    return await respond(request, operation)
