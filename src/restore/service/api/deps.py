"""What every model route shares before any work: the runtime, the API key, the query parameters
it takes (a stray or repeated one is a 422) and ``?format=``; ``MODEL_DEPENDENCIES`` runs them."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal

from fastapi import Depends, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from restore.service.errors import BadRequest
from restore.service.inference.runtime import Runtime
from restore.service.limits.admission import release_holds
from restore.service.limits.clients import api_key_owner

#: Output formats as ?format= takes them: our names, the usual aliases, and both in upper case.
FormatName = Literal["png", "jpeg", "jpg", "webp", "tiff", "tif", "PNG", "JPEG", "JPG", "WEBP", "TIFF", "TIF"]
FormatQuery = Annotated[
    FormatName | None,
    Query(description="Output format, overriding Accept: png, jpeg, webp or tiff. Default: the input's format (BMP -> PNG)."),
]

def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def require_api_key(request: Request) -> None:
    """401 unless the request carries a configured API key (when keys are configured)."""
    api_key_owner(request)


def reject_stray_query(request: Request) -> None:
    """422 for a query parameter the route does not take, or one given twice: silently ignoring
    ``sigmaa=25`` or keeping the last of ``sigma=25&sigma=50`` would serve what the client did not ask for."""
    route = request.scope.get("route")
    taken = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    counts = Counter(name for name, _ in request.query_params.multi_items())
    for name, count in counts.items():
        if name not in taken:
            offered = ", ".join(sorted(taken)) or "no query parameters"
            raise BadRequest(f"unknown query parameter {name!r}: {request.url.path} takes {offered}")
        if count > 1:
            raise BadRequest(f"query parameter {name!r} is given {count} times; give it once")


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included (an Operation's parameters live there)."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


#: Every model route: the API key first, then its query parameters; what a request holds (queue
#: place, in-flight budgets) is given back once it is answered.
MODEL_DEPENDENCIES = [Depends(require_api_key), Depends(reject_stray_query), Depends(release_holds)]
