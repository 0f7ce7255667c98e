"""The client's exceptions: one class per problem+json status the service answers.

    RestoreError ................... anything this client raises
    ├── ConnectionFailed ........... the service could not be reached (or the connection broke)
    ├── JobCancelled ............... a job waited on was cancelled
    └── ProblemError ............... the service answered with an error (``status``, ``title``, ``detail``)
        ├── MalformedRequest ....... 400
        ├── Unauthorized ........... 401  no or wrong API key
        ├── NotFound ............... 404  no such job (or not this key's)
        ├── MethodNotAllowed ....... 405
        ├── NotAcceptable .......... 406
        ├── RequestTimeout ......... 408
        ├── Conflict ............... 409  the job has no result (yet)
        ├── Gone ................... 410  the job expired
        ├── PayloadTooLarge ........ 413
        ├── UnsupportedMediaType ... 415
        ├── InvalidRequest ......... 422  bad parameter or corrupt image
        ├── HeadersTooLarge ........ 431
        ├── ServerError ............ 500
        ├── ServiceUnavailable ..... 503  after the retries Retry-After allowed
        └── InsufficientStorage .... 507

A job that fails raises the class of its own problem (a job whose result would not fit the
store raises InsufficientStorage), with the job attached as ``job``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class RestoreError(Exception):
    """Base of everything this client raises."""


class ConnectionFailed(RestoreError):
    pass


class JobCancelled(RestoreError):
    def __init__(self, message: str, job: Any = None) -> None:
        super().__init__(message)
        self.job = job


class ProblemError(RestoreError):
    status: ClassVar[int] = 0

    def __init__(self, status: int, title: str, detail: str, *, type: str = "about:blank",
                 headers: dict[str, str] | None = None, job: Any = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status_code = status
        self.title = title
        self.detail = detail
        self.type = type
        self.headers = headers or {}
        self.job = job

    @property
    def retry_after(self) -> float | None:
        """Seconds the service asked to wait (503), if it said."""
        return parse_retry_after(self.headers.get("retry-after"))


def _status_class(name: str, code: int, doc: str) -> type[ProblemError]:
    return type(name, (ProblemError,), {"status": code, "__doc__": doc, "__module__": __name__})


MalformedRequest = _status_class("MalformedRequest", 400, "400: not valid HTTP.")
Unauthorized = _status_class("Unauthorized", 401, "401: API keys are configured and this one is missing or wrong.")
NotFound = _status_class("NotFound", 404, "404: no such job, or not one created with this API key.")
MethodNotAllowed = _status_class("MethodNotAllowed", 405, "405: the path does not take this method (an unknown job operation).")
NotAcceptable = _status_class("NotAcceptable", 406, "406: no output format satisfies Accept.")
RequestTimeout = _status_class("RequestTimeout", 408, "408: the upload stalled.")
Conflict = _status_class("Conflict", 409, "409: the job has no result: queued, running, failed or cancelled.")
Gone = _status_class("Gone", 410, "410: the job finished too long ago, or was dropped for newer ones.")
PayloadTooLarge = _status_class("PayloadTooLarge", 413, "413: body or image over the service's limits.")
UnsupportedMediaType = _status_class("UnsupportedMediaType", 415, "415: not an image format the service reads.")
InvalidRequest = _status_class("InvalidRequest", 422, "422: a bad parameter, or a corrupt or empty image.")
HeadersTooLarge = _status_class("HeadersTooLarge", 431, "431: request headers too large.")
ServerError = _status_class("ServerError", 500, "500: the service failed (never caused by the input).")
ServiceUnavailable = _status_class("ServiceUnavailable", 503, "503: overloaded or not ready, after the allowed retries.")
InsufficientStorage = _status_class("InsufficientStorage", 507, "507: the job's result is larger than the service keeps.")

BY_STATUS: dict[int, type[ProblemError]] = {
    cls.status: cls
    for cls in (MalformedRequest, Unauthorized, NotFound, MethodNotAllowed, NotAcceptable, RequestTimeout, Conflict, Gone,
                PayloadTooLarge, UnsupportedMediaType, InvalidRequest, HeadersTooLarge, ServerError, ServiceUnavailable,
                InsufficientStorage)
}


def problem_error(status: int, problem: dict[str, Any], headers: dict[str, str] | None = None, job: Any = None) -> ProblemError:
    """The typed exception for a problem+json body (any other status: a plain ProblemError)."""
    cls = BY_STATUS.get(status, ProblemError)
    return cls(
        status, str(problem.get("title", "Error")), str(problem.get("detail", "")), type=str(problem.get("type", "about:blank")),
        headers=headers, job=job,
    )


def error_from_response(status: int, body: bytes, headers: dict[str, str]) -> ProblemError:
    try:
        problem = json.loads(body)
        if not isinstance(problem, dict):
            raise ValueError("not an object")
    except ValueError:
        problem = {"title": "Error", "detail": body[:200].decode("utf-8", "replace")}
    return problem_error(status, problem, headers)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the service sends integers; an HTTP date is not retried on)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
