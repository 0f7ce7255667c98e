"""POST /denoise: DnCNN, the model chosen by ``sigma`` (a trained level, the blind model, or ``auto``:
estimated per image) or named by ``model``."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from restore.core.noise_level import AUTO_RULE
from restore.service.api.deps import MODEL_DEPENDENCIES, FormatQuery
from restore.service.api.openapi import IMAGE_BODY, IMAGE_RESPONSES
from restore.service.api.operation import NOISE_SIGMA_HEADER, Operation, image_operation, respond
from restore.service.errors import BadRequest
from restore.service.types import Sigma

router = APIRouter(dependencies=MODEL_DEPENDENCIES)


#: /denoise's responses: the image routes' own, and X-Noise-Sigma on a 200.
DENOISE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **IMAGE_RESPONSES,
    200: {
        **IMAGE_RESPONSES[200],
        "headers": {
            NOISE_SIGMA_HEADER: {
                "description": "Unless sigma or model is given: the estimated noise level (per channel, 0-255 scale, one decimal) "
                "that picked the model named in X-Model, or `unknown` for an image under about 20x20 pixels",
                "schema": {"type": "string", "examples": ["23.7", "unknown"]},
            }
        },
    },
}


async def denoise_operation(
    request: Request,
    sigma: Annotated[
        float | Literal["auto", "blind"] | None,
        Query(
            description=(
                "Noise level on the 0-255 scale. Omitted or `auto` (the default): estimate the noise of each image "
                "(Liu et al. 2013 patch selection, Chen et al. 2015 eigenvalue rule, on the luma and on the chroma), "
                "return the level in X-Noise-Sigma and pick the model: " + AUTO_RULE + " 15, 25 or 50: the model "
                "trained for exactly that level (any other number is refused with 422 and the list of levels on "
                "offer). `blind`: the blind model (trained on Gaussian noise of 0-55), right for noise that is white "
                "in R, G and B at any level, but it leaves most of the noise in JPEG photos with 4:2:0 chroma, the "
                "usual camera and phone file (CBSD68, sigma 25, quality 90: +0.8 dB, against +5.5 dB with sigma=25)."
            ),
            openapi_examples={
                "auto": {"summary": "estimate the level of each image and pick the model from it (the default)", "value": "auto"},
                "level": {"summary": "the model trained for sigma 25", "value": 25},
                "blind": {"summary": "the blind model, whatever the image", "value": "blind"},
            },
        ),
    ] = None,
    model: Annotated[
        str | None,
        Query(
            description=(
                "A loaded denoise model by name (GET /v1/models lists them), instead of choosing by sigma: for "
                "example the paper's blind CDnCNN-B, `dncnn-color-blind`, for noise known to be white Gaussian. "
                "Not together with sigma; a name that is not loaded, or a gray model for a colour image, is refused with 422."
            ),
            min_length=1,
            max_length=128,
            openapi_examples={"paper": {"summary": "the paper's blind colour model", "value": "dncnn-color-blind"}},
        ),
    ] = None,
    format: FormatQuery = None,
) -> Operation:
    """/denoise's parameters (shared by POST /denoise and POST /v1/jobs/denoise)."""
    if model is not None and sigma is not None:
        raise BadRequest("give sigma or model, not both: model names one model, sigma lets the service choose")
    return dataclasses.replace(image_operation(request, task="denoise", sigma=denoise_level(sigma, model), fmt_query=format), model=model)


def denoise_level(sigma: float | Literal["auto", "blind"] | None, model: str | None) -> Sigma:
    """What the runtime selects by: ``auto`` unless the request names a level, the blind model
    (``None``) or a model. Estimating is the default because it is what works on camera and phone
    JPEGs, where the blind model leaves the noise in (CBSD68 with sigma 15 then JPEG q75 4:2:0: +0.08 dB,
    against +3.24 dB estimated, docs/dncnn.md); on white noise the estimate keeps the blind model anyway."""
    if model is not None:
        return None
    if sigma is None:
        return "auto"
    return None if sigma == "blind" else sigma


@router.post(
    "/denoise",
    summary="Remove noise (DnCNN)",
    response_class=Response,
    responses=DENOISE_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def denoise(request: Request, operation: Annotated[Operation, Depends(denoise_operation)]) -> Response:
    """Gray images use the gray models, colour images the colour ones; alpha, ICC profile and 16-bit depth pass through."""
    return await respond(request, operation)
