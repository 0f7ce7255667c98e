"""POST /derain, /dehaze, /desnow: one adverse-weather model that is told which weather to remove.

The model (Chen et al., CVPR 2022: one student distilled from single-weather teachers) takes the
weather as a second input since model 3: each route passes its own (``/derain`` rain, ``/dehaze``
haze, ``/desnow`` snow), so a clean photo or a hazy one sent to ``/derain`` is left alone rather
than "corrected" by a guess. ``?weather=auto`` runs it blind (the paper's setting: the model
decides), and ``?weather=rain|haze|snow`` overrides the route's choice (photos with two weathers).
A blind model file (model 2) ignores the label; ``X-Weather`` says which label a conditioned one got.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from restore.service.api.deps import MODEL_DEPENDENCIES, FormatQuery
from restore.service.api.openapi import IMAGE_BODY, IMAGE_RESPONSES
from restore.service.api.operation import Operation, image_operation, respond

router = APIRouter(dependencies=MODEL_DEPENDENCIES)

#: Route name -> the weather it removes.
ROUTES = {"derain": "rain", "dehaze": "haze", "desnow": "snow"}
#: What ``?weather=auto`` is called by the model: its blind label.
AUTO = "unknown"

WeatherQuery = Annotated[
    Literal["auto", "rain", "haze", "snow"] | None,
    Query(
        description=(
            "Which weather the model removes. Omitted: the route's own (/derain rain, /dehaze haze, /desnow snow), "
            "so a photo without that weather comes back nearly unchanged. `auto`: the model decides by itself "
            "(blind; use it when you do not know what the photo shows). The label used is returned in X-Weather."
        ),
        openapi_examples={"auto": {"summary": "let the model decide which weather to remove", "value": "auto"}},
    ),
]


def weather_operation_for(route: str) -> Callable[..., Awaitable[Operation]]:
    """The parameters of one weather route (shared with POST /v1/jobs/<route>)."""
    default = ROUTES[route]

    async def weather_operation(request: Request, weather: WeatherQuery = None, format: FormatQuery = None) -> Operation:
        label = default if weather is None else AUTO if weather == "auto" else weather
        operation = image_operation(request, task="weather", sigma=None, fmt_query=format)
        return dataclasses.replace(operation, weather=label)

    weather_operation.__name__ = f"{route}_operation"
    return weather_operation


_DESCRIPTION = (
    "**Experimental**: removes {weather} with the unified adverse-weather model trained here on synthetic weather, "
    "told that the photo shows {weather} (`weather=auto`: the model decides); it removes part of the weather and "
    "changes photos without it only slightly, and stays experimental until it meets its quality targets (documentation: "
    "models, weather). Output: the input's size, bit depth, alpha and ICC profile; gray input gives gray output."
)
_NOUNS = {"rain": "rain streaks", "haze": "haze", "snow": "snow"}

for _route, _summary in (
    ("derain", "Remove rain (experimental; unified adverse-weather model)"),
    ("dehaze", "Remove haze (experimental; unified adverse-weather model)"),
    ("desnow", "Remove snow (experimental; unified adverse-weather model)"),
):
    def _make(route: str) -> Callable[..., Awaitable[Response]]:
        # a default, not an Annotated[...]: string annotations (PEP 563) cannot see ``route``
        async def endpoint(request: Request, operation: Operation = Depends(weather_operation_for(route))) -> Response:  # noqa: B008
            return await respond(request, operation)

        endpoint.__name__ = route
        return endpoint

    router.add_api_route(
        f"/{_route}", _make(_route), methods=["POST"], summary=_summary,
        description=_DESCRIPTION.format(weather=_NOUNS[ROUTES[_route]]),
        response_class=Response, responses=IMAGE_RESPONSES, openapi_extra=IMAGE_BODY, operation_id=_route,
    )

__all__ = ["router", "weather_operation_for", "ROUTES"]
