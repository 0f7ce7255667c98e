"""One exception tree for everything a request can run into, and one table from error to HTTP status.

    ServiceError .............. 500  anything unforeseen (rendered without internals)
    ├── MalformedRequest ...... 400  not valid HTTP/1.1 (answered by the server before the app sees it)
    ├── RequestTimeout ........ 408  headers or body stalled past their timeout
    ├── HeadersTooLarge ....... 431  request line and headers over RESTORE_MAX_HEADER_BYTES
    ├── BadRequest ............ 422  a parameter or multipart field is wrong, unknown or repeated
    ├── Unauthorized .......... 401  missing or wrong API key
    ├── NotFound .............. 404  no such job (or not one of this API key's)
    ├── Conflict .............. 409  the job has no result (yet, or it failed or was cancelled)
    ├── Gone .................. 410  the job's result expired or was evicted (the detail says by which bound)
    ├── PayloadTooLarge ....... 413  body over the byte limit, image over the pixel limit or a client's share
    ├── UnsupportedMediaType .. 415  not an image format we read
    ├── CorruptImage .......... 422  a format we read, but the data is broken or truncated
    ├── NotAcceptable ......... 406  no output format satisfies Accept / ?format
    ├── Overloaded ............ 503  queue full, a budget or a client's share spent, too many requests or connections (Retry-After)
    ├── ModelUnavailable ...... 503  the model did not load, or has not finished warming up
    ├── ShuttingDown .......... 503  SIGTERM's grace period ran out before this request finished
    ├── OutOfMemory ........... 503  an allocation failed (MemoryError anywhere; with Retry-After)
    ├── InsufficientStorage ... 507  a job's result is larger than one client may keep
    └── InferenceFailed ....... 500  the runtime itself failed (never caused by input)

Lower-level errors (Pillow, imagecodecs, ONNX Runtime) are translated where they are raised, with
``raise ... from exc``, so the HTTP layer only ever sees this tree; a MemoryError that escapes
anyway is translated by ``as_service_error``, which every catch-all (the app's handlers, the
outermost middleware, a job's runner) asks before it would answer 500. Errors are rendered as RFC 9457
``application/problem+json``. A client that leaves before the answer is logged and counted as 499
(nginx's "client closed request"); nothing reaches it.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import ClassVar

from starlette.responses import JSONResponse

PROBLEM_JSON = "application/problem+json"


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def problem(self) -> dict[str, object]:
        """The RFC 9457 body; ``type`` is a stable relative URI clients can switch on."""
        return {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class MalformedRequest(ServiceError):
    status, title, slug = 400, "Malformed request", "malformed-request"


class RequestTimeout(ServiceError):
    status, title, slug = 408, "Request timeout", "request-timeout"


class HeadersTooLarge(ServiceError):
    status, title, slug = 431, "Request header fields too large", "headers-too-large"


class BadRequest(ServiceError):
    status, title, slug = 422, "Invalid request", "invalid-request"


class Unauthorized(ServiceError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class NotFound(ServiceError):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(ServiceError):
    status, title, slug = 409, "Conflict", "conflict"


class Gone(ServiceError):
    status, title, slug = 410, "Gone", "gone"


class PayloadTooLarge(ServiceError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(ServiceError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class CorruptImage(ServiceError):
    status, title, slug = 422, "Corrupt image", "corrupt-image"


class NotAcceptable(ServiceError):
    status, title, slug = 406, "Not acceptable", "not-acceptable"


class Overloaded(ServiceError):
    status, title, slug = 503, "Overloaded", "overloaded"


class ModelUnavailable(ServiceError):
    status, title, slug = 503, "Model unavailable", "model-unavailable"


class ShuttingDown(ServiceError):
    status, title, slug = 503, "Shutting down", "shutting-down"


class OutOfMemory(ServiceError):
    status, title, slug = 503, "Out of memory", "out-of-memory"


class InsufficientStorage(ServiceError):
    status, title, slug = 507, "Insufficient storage", "insufficient-storage"


class InferenceFailed(ServiceError):
    status, title, slug = 500, "Inference failed", "inference-failed"


class StartupError(RuntimeError):
    """Raised before serving when the configuration cannot be honoured (e.g. cuda without a GPU)."""


#: Retry-After sent with OutOfMemory: the memory is usually back once the requests in flight end.
OUT_OF_MEMORY_RETRY_S = 5


def as_service_error(exc: BaseException) -> ServiceError | None:
    """The tree's verdict on ``exc``: itself, OutOfMemory for a MemoryError (never the client's
    fault, never a 500), or None for a bug (which stays a logged 500)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, MemoryError):
        return OutOfMemory(
            "the server ran out of memory for this request; retry shortly",
            headers={"Retry-After": str(OUT_OF_MEMORY_RETRY_S)},
        )
    return None


def public_detail(exc: BaseException) -> str:
    """What a client may read about a failure (/readyz, 503 details): the message, except that an OS
    error names its file without the directory. The full text belongs in the log."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {PurePath(str(exc.filename)).name}"
    return str(exc)


def problem_response(error: ServiceError) -> JSONResponse:
    """The one rendering of an error: its status, its headers, the problem+json body."""
    return JSONResponse(error.problem(), status_code=error.status, headers=error.headers, media_type=PROBLEM_JSON)
