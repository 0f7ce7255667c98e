"""The FastAPI application: wiring of settings, runtime, middleware, error mapping and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from restore.service.api import denoise, edges, weather, web
from restore.service.api import jobs as job_routes
from restore.service.api.openapi import METRICS_RESPONSES, READYZ_RESPONSES, document_auth, document_gains
from restore.service.api.operation import ClientDisconnected
from restore.service.errors import PROBLEM_JSON, BadRequest, ServiceError, as_service_error, problem_response
from restore.service.inference.runtime import EngineFactory, Runtime
from restore.service.jobs import JobStore
from restore.service.limits.budget import InFlight
from restore.service.metrics import Metrics
from restore.service.middleware import Occupancy, RequestContext, RequestLimits
from restore.service.settings import Settings

log = logging.getLogger(__name__)
VERSION = "0.1.0"


async def _service_error(request: Request, exc: Exception) -> Response:
    """Our tree, and what ``as_service_error`` translates into it (a MemoryError: 503, not 500)."""
    error = as_service_error(exc)
    assert error is not None
    if error.status >= 500:
        log.warning("request failed", extra={"status": error.status, "detail": error.detail})
    return problem_response(error)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return problem_response(BadRequest(details))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error = ServiceError(str(exc.detail), headers=dict(exc.headers or {}))
    if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
        error.headers["Allow"] = ", ".join(_allowed_methods(request))
    body = {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code, "detail": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=error.headers, media_type=PROBLEM_JSON)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route on the most specific path that matches: GET and DELETE
    /v1/jobs/{id} are two routes, and /v1/jobs/denoise (POST) is more specific than /v1/jobs/{id}."""
    matching = [
        route for route in request.app.state.routes
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE
    ]
    fewest = min((route.path.count("{") for route in matching), default=0)
    return sorted({method for route in matching if route.path.count("{") == fewest for method in route.methods or ()})


async def _disconnected(request: Request, exc: Exception) -> Response:
    """The client left (during the upload, or while its tiles waited): 499 in the log and metrics, no traceback."""
    log.info("client disconnected; nothing was sent and its tiles, if any, were dropped")
    return Response(status_code=499)


def create_app(
    settings: Settings | None = None, *, engine_factory: EngineFactory | None = None, ready_message: str = "ready"
) -> FastAPI:
    """Build the app; raises StartupError/ManifestError before serving when the configuration cannot work.
    ``ready_message`` is logged once every required model is ready (``python -m restore.service`` puts the URL in it)."""
    settings = settings or Settings()
    metrics = Metrics()
    runtime = Runtime(settings, metrics, engine_factory, ready_message)
    jobs = JobStore(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        await jobs.start()
        yield
        await jobs.stop()  # unfinished jobs are cancelled before their queues stop
        await runtime.stop()

    app = FastAPI(
        title="restore",
        version=VERSION,
        description="Image restoration on ONNX Runtime: POST an image, get it back restored.",
        lifespan=lifespan,
        docs_url=None,  # served by restore.service.api.web from packaged assets, not FastAPI's CDN defaults
        redoc_url=None,
    )
    app.state.runtime = runtime
    in_flight = app.state.in_flight = InFlight.from_settings(settings, metrics)
    app.state.jobs = jobs
    occupancy = app.state.occupancy = Occupancy()  # counted by the edge and RequestLimits, read by /readyz
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(MemoryError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnected, _disconnected)
    app.add_exception_handler(ClientDisconnect, _disconnected)

    @app.get(
        "/healthz", tags=["operations"],
        summary="Liveness: 200 while the process serves, however busy (it has its own connections past the cap)",
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["operations"], responses=READYZ_RESPONSES,
        summary="Readiness: 200 once every required model loaded, verified and warmed up; 503 `saturated` while full",
    )
    async def readyz() -> JSONResponse:
        not_ready = runtime.not_ready()
        if not runtime.ready:
            return JSONResponse({"status": "not ready", "not_ready": not_ready}, status_code=503)
        serving = sorted(name for name, state in runtime.models.items() if state.status == "ready")
        # optional models (not in RESTORE_REQUIRED_MODELS) may still be loading or retried
        body: dict[str, Any] = {"models": serving, **({"not_ready": not_ready} if not_ready else {})}
        if full := saturated():
            headers = {"Retry-After": str(settings.retry_after_s)}
            return JSONResponse({"status": "saturated", "saturated": full, **body}, status_code=503, headers=headers)
        return JSONResponse({"status": "ready", **body})

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # orchestrators probe with HEAD too
        app.add_api_route(
            path, probe, methods=["HEAD"], tags=["operations"], operation_id=f"{path.strip('/')}_head",
            summary=f"GET {path} without the body",
        )

    def saturated() -> list[str]:
        """What is full now: a load balancer should send new work elsewhere, an orchestrator must not restart."""
        full = {
            "connections": occupancy.connections >= settings.max_connections,
            "requests": occupancy.requests >= settings.max_requests,
            "pixels": in_flight.pixels.used >= in_flight.pixels.limit,
            "body_bytes": in_flight.bodies.used >= in_flight.bodies.limit,
        }
        return [name for name, spent in full.items() if spent]

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response, responses=METRICS_RESPONSES)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["operations"], summary="The manifest, with the provider in use and tile settings")
    async def models() -> dict[str, Any]:
        return {
            "models": [
                {
                    **state.spec.public(),
                    "status": state.status,
                    "required": state.required,
                    "load_attempts": state.attempts,
                    "provider": state.provider,
                    "precision": state.precision,
                    "speed_mp_per_s": None if state.scheduler is None else round(state.scheduler.pixels_per_s / 1e6, 4),
                    "tile": {
                        "size": state.tile or settings.tile_size,
                        "granule": state.granule,
                        "bucket": state.bucket,
                        "overlap": state.spec.tile_overlap(settings.tile_overlap),
                        "margin": state.spec.overlap,
                        "feather": state.spec.feather_for(settings.tile_overlap),
                        "multiple": state.spec.multiple,
                        "max_batch": settings.batch_limit(state.provider or ""),
                    },
                }
                for state in runtime.models.values()
            ],
            "device": settings.device,
            "precision": settings.precision,
            "cpu_int8_flags": sorted(runtime.int8_flags),
            "max_batch_wait_ms": settings.max_batch_wait_ms,
            "max_queue_seconds": settings.max_queue_seconds,
        }

    app.include_router(denoise.router, tags=["models"])
    app.include_router(edges.router, tags=["models"])
    app.include_router(weather.router, tags=["models"])
    app.include_router(job_routes.submit_router, tags=["jobs"])
    app.include_router(job_routes.router, tags=["jobs"])
    web.add_web(app)
    model_routers = (denoise.router, edges.router, weather.router, job_routes.submit_router)
    routes = [*app.routes, *(route for router in (*model_routers, job_routes.router) for route in router.routes)]
    app.state.routes = routes  # flat (FastAPI nests included routers): what a 405's Allow is read from
    endpoints = frozenset(str(r.path) for r in routes if getattr(r, "path", None))
    app.add_middleware(
        RequestLimits, limited=frozenset(str(r.path) for router in model_routers for r in router.routes),
        occupancy=occupancy, max_requests=settings.max_requests, max_requests_per_client=settings.max_requests_per_client,
        body_timeout_s=settings.body_timeout_s, min_upload_rate=settings.min_upload_rate, retry_after_s=settings.retry_after_s,
    )
    app.add_middleware(RequestContext, metrics=metrics, endpoints=endpoints)  # outermost: it sees every answer
    document_auth(app, settings)
    document_gains(app, [state.spec for state in runtime.models.values()])
    return app
