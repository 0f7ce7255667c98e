"""What the sync and async clients share: operations and their parameters, the job record, image
sources, and the retry rule. No I/O here, so the two clients differ only in how they wait."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from restore.client._errors import ProblemError, parse_retry_after, problem_error

#: The service's operations; derain, dehaze and desnow are one model under three names.
OPERATIONS = ("denoise", "edges", "derain", "dehaze", "desnow")
#: An image: its bytes, a path to read (streamed, never loaded whole), or an open binary file.
ImageSource = Union[bytes, str, "os.PathLike[str]", IO[bytes]]
DEFAULT_URL = "http://localhost:8000"
#: Bytes per chunk when a file is streamed up.
CHUNK = 1 << 20


@dataclass(frozen=True)
class Job:
    """A job as the service last reported it (``GET /v1/jobs/{id}``)."""

    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    operation: str
    done: int  # tiles inferred
    total: int  # tiles of the image
    raw: dict[str, Any]  # the whole JSON: timings, model, result, error...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        progress = data.get("progress") or {}
        return cls(data["id"], data["status"], data["operation"], int(progress.get("done", 0)), int(progress.get("total", 0)), data)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def error(self) -> ProblemError | None:
        """A failed job's problem as the typed exception of its status."""
        problem = self.raw.get("error")
        return None if not problem else problem_error(int(problem.get("status", 500)), problem, job=self)


def check_operation(operation: str) -> None:
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}: one of {', '.join(OPERATIONS)}")


def query(params: dict[str, Any]) -> dict[str, str]:
    """Query parameters as the service reads them: None dropped, booleans as true/false."""
    return {
        name: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for name, value in params.items() if value is not None
    }


def source_size(image: ImageSource) -> int | None:
    """The upload's length, so the service can refuse an oversized body before reading it."""
    if isinstance(image, bytes):
        return len(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).stat().st_size
    try:
        return os.fstat(image.fileno()).st_size - image.tell()
    except (OSError, AttributeError, ValueError):
        return None


def rewindable(image: ImageSource) -> bool:
    """Whether the upload can be sent again after a 503 (bytes, a path, a seekable file)."""
    if isinstance(image, (bytes, str, os.PathLike)):
        return True
    try:
        return bool(image.seekable())
    except (AttributeError, ValueError):
        return False


def headers_for(api_key: str | None, size: int | None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream", "Accept": "*/*"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


def retry_wait(status: int, headers: dict[str, str], attempt: int, retries: int, max_wait: float) -> float | None:
    """Seconds to wait before trying again, or None: only a 503 that says Retry-After is retried,
    at most ``retries`` times, each wait capped at ``max_wait``. A 503 without it (a model that
    failed to load, a server shutting down) will not get better by waiting here."""
    if status != 503 or attempt >= retries:
        return None
    seconds = parse_retry_after(headers.get("retry-after"))
    return None if seconds is None else min(seconds, max_wait)
