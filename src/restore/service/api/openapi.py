"""The documented contract: request bodies, every status each route can answer, and the auth scheme.

Kept apart from the handlers so the schema a client (or schemathesis) reads is one table to check
against the code: each status listed here is one the route really returns, and each one it returns
is listed (tests/restore/service/api/test_openapi.py runs schemathesis against the app).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST

from restore.service.errors import PROBLEM_JSON
from restore.core.manifest import ModelSpec
from restore.service.images.negotiation import MEDIA_TYPES
from restore.service.settings import Settings

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A stable relative URI to switch on, e.g. /problems/overloaded"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What went wrong and what to send instead"},
    },
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def problem(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """A response documented as application/problem+json (RFC 9457)."""
    response: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}
    if retry_after:
        response["headers"] = _RETRY_AFTER
    return response


IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image: multipart/form-data with a file field `image`, or the raw bytes with an image content type.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "binary"}}}
            },
            **{media: _BINARY for media in ("image/png", "image/jpeg", "image/webp", "image/tiff", "image/bmp")},
            "application/octet-stream": _BINARY,
        },
    }
}
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The restored image", "content": {media: _BINARY for media in MEDIA_TYPES.values()}},
    401: problem("API keys are configured and the request has no valid `Authorization: Bearer` key"),
    406: problem("No output format both satisfies Accept and can hold this image"),
    408: problem("The body stalled: no bytes for RESTORE_BODY_TIMEOUT_S"),
    413: problem("Body over RESTORE_MAX_BODY_BYTES, image over RESTORE_MAX_PIXELS, or more tiles than the queue holds"),
    415: problem("Not an image format we read"),
    422: problem("Corrupt image, empty body, bad, unknown or repeated query parameter, or ?format= that cannot hold the image"),
    500: problem("The runtime failed (never caused by input); the detail names the model"),
    503: problem("Queue full, too many requests in flight, or the model is not ready (see Retry-After)", retry_after=True),
}
#: What every job route answers about a job (src/restore/service/jobs.py, Job.public).
JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id", "status", "operation", "model", "url", "progress", "created_at", "started_at", "finished_at", "expires_at",
        "timings", "result", "error",
    ],
    "properties": {
        "id": {"type": "string", "description": "Unguessable; valid until the job expires"},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "operation": {"type": "string", "enum": ["denoise", "edges", "derain", "dehaze", "desnow"]},
        "model": {"type": "string", "description": "The model that serves it (by default: the one the noise estimate picked)"},
        "url": {"type": "string", "description": "This job: /v1/jobs/{id}"},
        "progress": {
            "type": "object",
            "required": ["done", "total", "fraction"],
            "properties": {
                "done": {"type": "integer", "description": "Tiles inferred"},
                "total": {"type": "integer", "description": "Tiles of the image"},
                "fraction": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time", "description": "When its first tile was inferred"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time", "description": "When a finished job and its result are deleted"},
        "timings": {
            "type": "object", "additionalProperties": {"type": "number"},
            "description": "Seconds per stage as they finish: decode, estimate (the noise estimate, by default on /denoise), queue, infer, encode",
        },
        "result": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["url", "media_type", "bytes"],
                    "properties": {"url": {"type": "string"}, "media_type": {"type": "string"}, "bytes": {"type": "integer"}},
                },
            ],
            "description": "Once succeeded: where to GET the image",
        },
        "error": {"oneOf": [{"type": "null"}, PROBLEM_SCHEMA], "description": "Once failed: the problem, as the synchronous route would answer it"},
    },
}
_JOB_JSON = {"application/json": {"schema": JOB_SCHEMA}}
_UNKNOWN_JOB = problem("No such job, or not one created with this API key (jobs do not survive a restart)")
_EXPIRED_JOB = problem("The job finished more than RESTORE_JOBS_TTL_S ago, or was dropped to make room for newer jobs")
JOB_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Accepted: the image passed every check the synchronous route makes; poll Location",
        "headers": {"Location": {"description": "The job: /v1/jobs/{id}", "schema": {"type": "string"}}},
        "content": _JOB_JSON,
    },
    **{status: response for status, response in IMAGE_RESPONSES.items() if status != 200},
    503: problem(
        "Queue full, too many requests in flight, RESTORE_JOBS_MAX_COUNT unfinished jobs, or the model is not ready "
        "(see Retry-After)", retry_after=True,
    ),
}
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The job", "content": _JOB_JSON},
    401: IMAGE_RESPONSES[401],
    404: _UNKNOWN_JOB,
    410: _EXPIRED_JOB,
}
JOB_RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image, with the headers the synchronous route sends (X-Model, X-Model-Version, Server-Timing, X-Noise-Sigma)",
        "content": {media: _BINARY for media in MEDIA_TYPES.values()},
    },
    401: IMAGE_RESPONSES[401],
    404: _UNKNOWN_JOB,
    409: problem("The job has no result: queued or running (poll the job), failed or cancelled"),
    410: _EXPIRED_JOB,
}
JOB_DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The job was queued or running: it is cancelled (its tiles left the queue) and kept until it expires", "content": _JOB_JSON},
    204: {"description": "The job had finished: it and its result are deleted"},
    401: IMAGE_RESPONSES[401],
    404: _UNKNOWN_JOB,
    410: _EXPIRED_JOB,
}
READYZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every required model (RESTORE_REQUIRED_MODELS, default all) loaded, passed its sha256 check and ran "
        "its warm-up batch; `not_ready`, when present, lists optional models still loading or being retried"
    },
    503: {
        "description": "`not ready`: `not_ready` maps each model still loading or failed to the reason. `saturated`: the "
        "models are ready but the server is full (`saturated` lists which of connections, requests, pixels, body_bytes), "
        "with Retry-After; send new work elsewhere, but do not restart it (/healthz still answers 200)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string", "enum": ["not ready", "saturated"]},
                        "not_ready": {"type": "object", "additionalProperties": {"type": "string"}},
                        "saturated": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["connections", "requests", "pixels", "body_bytes"]},
                        },
                        "models": {"type": "array", "items": {"type": "string"}},
                    },
                }
            }
        },
    },
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format", "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
}
BEARER = "bearer"


def document_auth(app: FastAPI, settings: Settings) -> None:
    """Add the bearer scheme to the schema, and require it on the model endpoints when keys are set."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain()
        schema.setdefault("components", {})["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "One of RESTORE_API_KEYS; required on the model endpoints only when that is set",
            }
        }
        for operations in schema["paths"].values():
            for operation in operations.values():
                if "401" in operation.get("responses", {}):
                    if settings.api_keys:
                        operation["security"] = [{BEARER: []}]
                    else:
                        del operation["responses"]["401"]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def heldout_gains(metrics: dict[str, Any]) -> str:
    """A weather model's measured gains from its manifest metrics (held-out photos, output minus input
    PSNR), e.g. "rain +0.89 dB, haze +6.32 dB, snow +2.45 dB; clean photos 28.4 dB" (a model told the
    weather: "...; clean photos 34.6 dB through rain, 31.9 dB through haze, ..."); "" when not measured."""
    heldout, source = metrics.get("heldout") or {}, (metrics.get("by_method") or {}).get("input") or {}
    gains = [
        f"{weather} {heldout[weather]['psnr'] - source[weather]['psnr']:+.2f} dB"
        for weather in ("rain", "haze", "snow") if "psnr" in heldout.get(weather, {}) and "psnr" in source.get(weather, {})
    ]
    clean = heldout.get("clean", {}).get("psnr")
    if clean is not None:
        no_harm = f"clean photos {clean:.1f} dB"
    else:  # a model told the weather: clean photos were measured through each route
        routes = {k.removeprefix("clean:"): v["psnr"] for k, v in heldout.items() if k.startswith("clean:") and "psnr" in v}
        no_harm = "clean photos " + ", ".join(f"{psnr:.1f} dB through {route}" for route, psnr in routes.items()) if routes else ""
    return ", ".join(gains) + (f"; {no_harm}" if no_harm and gains else "")


def document_gains(app: FastAPI, specs: list[ModelSpec]) -> None:
    """Append the served weather model's measured gains to the weather routes' descriptions: the
    routes are experimental until the model meets its targets, and /docs says by how much it misses."""
    gains = next((heldout_gains(spec.metrics) for spec in specs if spec.task == "weather"), "")
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain()
        for path in ("/derain", "/dehaze", "/desnow"):
            operation = schema["paths"].get(path, {}).get("post")
            if operation is not None and gains:
                operation["description"] += f" Measured on held-out photos (PSNR gain over the input): {gains}."
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
