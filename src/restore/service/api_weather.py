"""POST /derain, /dehaze, /desnow: one unified adverse-weather model behind three names.

The model (Chen et al., CVPR 2022: one student distilled from rain, haze and snow teachers) needs
no weather label, so the three paths are aliases: they exist because users search for the word
that matches their photo, and each is counted separately in the metrics.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from restore.service.api import MODEL_DEPENDENCIES, FormatQuery, Operation, image_operation, respond
from restore.service.openapi import IMAGE_BODY, IMAGE_RESPONSES

router = APIRouter(dependencies=MODEL_DEPENDENCIES)

_DESCRIPTION = (
    "**Experimental**: one model trained here on synthetic weather, which removes part of the rain, haze "
    "and snow and also changes photos without weather; it stays experimental until it meets its quality "
    "targets (documentation: models, weather). No weather label is needed, so /derain, /dehaze and "
    "/desnow are the same model. Output: the input's size, bit depth, alpha and ICC profile; gray input "
    "gives gray output."
)


async def weather_operation(request: Request, format: FormatQuery = None) -> Operation:
    """The weather routes' parameters (shared with POST /v1/jobs/derain, /dehaze and /desnow)."""
    return image_operation(request, task="weather", sigma=None, fmt_query=format)


async def _weather(request: Request, operation: Annotated[Operation, Depends(weather_operation)]) -> Response:
    return await respond(request, operation)


for _path, _summary in (
    ("/derain", "Remove rain (experimental; unified adverse-weather model)"),
    ("/dehaze", "Remove haze (experimental; alias of /derain: the same model)"),
    ("/desnow", "Remove snow (experimental; alias of /derain: the same model)"),
):
    router.add_api_route(
        _path, _weather, methods=["POST"], summary=_summary, description=_DESCRIPTION,
        response_class=Response, responses=IMAGE_RESPONSES, openapi_extra=IMAGE_BODY,
        operation_id=_path.strip("/"),
    )

__all__ = ["router", "weather_operation"]
