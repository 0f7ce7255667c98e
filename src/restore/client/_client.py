"""``Client`` (blocking) and ``AsyncClient``: the same methods, one waits with time.sleep and the
other with asyncio.sleep. Both stream uploads from paths and files, retry a 503 that carries
Retry-After (``retries`` times, each wait at most ``max_retry_wait`` seconds), and raise the
typed exception of any other error (restore.client._errors)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from restore.client._base import CHUNK, DEFAULT_URL, ImageSource, Job, check_operation, headers_for, query, retry_wait, rewindable, source_size
from restore.client._errors import ConnectionFailed, JobCancelled, error_from_response

#: Called with the job each time its progress or status changes.
ProgressCallback = Callable[[Job], None]


@contextmanager
def _opened(image: ImageSource | None) -> Iterator[bytes | IO[bytes] | None]:
    """The upload for one attempt: a path is opened (and closed after), a file rewound to where it started."""
    if image is None or isinstance(image, bytes):
        yield image
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as handle:
            yield handle
    else:
        start = image.tell() if rewindable(image) else None
        try:
            yield image
        finally:
            if start is not None:
                image.seek(start)


def _job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else job


def _finished_or_raise(job: Job) -> Job:
    if job.status == "failed":
        error = job.error()
        assert error is not None
        raise error
    if job.status == "cancelled":
        raise JobCancelled(f"job {job.id} was cancelled", job)
    return job


class _Common:
    def __init__(
        self, url: str, api_key: str | None, retries: int, max_retry_wait: float, poll_interval: float,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.poll_interval = poll_interval

    def _headers(self, image: ImageSource | None) -> dict[str, str]:
        headers = headers_for(self.api_key, None if image is None else source_size(image))
        if image is None:
            headers.pop("Content-Type")
            headers.pop("Content-Length", None)
        return headers


class Client(_Common):
    """Blocking client. ``with Client(url, api_key=...) as client: client.denoise("photo.jpg")``."""

    def __init__(
        self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 600.0, retries: int = 5,
        max_retry_wait: float = 60.0, poll_interval: float = 0.5, transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, retries, max_retry_wait, poll_interval)
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport)
        self._sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, *, image: ImageSource | None = None, params: dict[str, str] | None = None,
              stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            with _opened(image) as content:
                request = self._http.build_request(method, path, content=content, params=params, headers=self._headers(image))
                try:
                    response = self._http.send(request, stream=stream)
                except httpx.TransportError as exc:
                    raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from exc
            if response.status_code < 400:
                return response
            body = response.read()
            response.close()
            headers = dict(response.headers)
            wait = retry_wait(response.status_code, headers, attempt, self.retries, self.max_retry_wait) if (
                image is None or rewindable(image)) else None
            if wait is None:
                raise error_from_response(response.status_code, body, headers)
            self._sleep(wait)
            attempt += 1

    def run(self, operation: str, image: ImageSource, **params: Any) -> bytes:
        """POST /{operation}: the restored image's bytes."""
        check_operation(operation)
        return self._send("POST", f"/{operation}", image=image, params=query(params)).content

    def denoise(self, image: ImageSource, *, sigma: float | str | None = None, model: str | None = None,
                format: str | None = None) -> bytes:
        return self.run("denoise", image, sigma=sigma, model=model, format=format)

    def edges(self, image: ImageSource, *, thin: bool | None = None, threshold: float | None = None, side: str | None = None,
              depth: int | None = None, format: str | None = None) -> bytes:
        return self.run("edges", image, thin=thin, threshold=threshold, side=side, depth=depth, format=format)

    def derain(self, image: ImageSource, *, format: str | None = None) -> bytes:
        return self.run("derain", image, format=format)

    def dehaze(self, image: ImageSource, *, format: str | None = None) -> bytes:
        return self.run("dehaze", image, format=format)

    def desnow(self, image: ImageSource, *, format: str | None = None) -> bytes:
        return self.run("desnow", image, format=format)

    def submit(self, operation: str, image: ImageSource, **params: Any) -> Job:
        """POST /v1/jobs/{operation}: every refusal comes now, as the synchronous call would raise it."""
        check_operation(operation)
        return Job.from_json(self._send("POST", f"/v1/jobs/{operation}", image=image, params=query(params)).json())

    def job(self, job: Job | str) -> Job:
        return Job.from_json(self._send("GET", f"/v1/jobs/{_job_id(job)}").json())

    def wait(self, job: Job | str, *, progress: ProgressCallback | None = None, timeout: float | None = None) -> Job:
        """Poll until the job finishes; raises the failed job's typed error, or JobCancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        current, seen = self.job(job), None
        while True:
            if progress is not None and (current.status, current.done) != seen:
                seen = (current.status, current.done)
                progress(current)
            if current.finished:
                return _finished_or_raise(current)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {current.id} did not finish within {timeout} s")
            time.sleep(self.poll_interval)
            current = self.job(current)

    def result(self, job: Job | str, dest: str | os.PathLike[str] | None = None) -> bytes | None:
        """The finished job's image: its bytes, or streamed into ``dest`` (then None)."""
        response = self._send("GET", f"/v1/jobs/{_job_id(job)}/result", stream=dest is not None)
        if dest is None:
            return response.content
        try:
            with open(dest, "wb") as out:
                for piece in response.iter_bytes(CHUNK):
                    out.write(piece)
        finally:
            response.close()
        return None

    def cancel(self, job: Job | str) -> None:
        """Cancel a queued or running job (its tiles leave the queue), or delete a finished one."""
        self._send("DELETE", f"/v1/jobs/{_job_id(job)}")

    def process(self, operation: str, image: ImageSource, *, progress: ProgressCallback | None = None, **params: Any) -> bytes:
        """Submit, wait (reporting progress), fetch and delete: ``run`` with progress, for big images."""
        job = self.submit(operation, image, **params)
        try:
            self.wait(job, progress=progress)
            data = self.result(job)
            assert data is not None
            return data
        finally:
            try:
                self.cancel(job)  # cancels it if we are interrupted, frees the server's copy otherwise
            except Exception:  # noqa: BLE001 - best effort: the service drops it when it expires anyway
                pass


async def _chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    while piece := await asyncio.to_thread(handle.read, CHUNK):
        yield piece


class AsyncClient(_Common):
    """The same methods as ``Client``, awaitable: ``async with AsyncClient(url) as client: await client.denoise(path)``."""

    def __init__(
        self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 600.0, retries: int = 5,
        max_retry_wait: float = 60.0, poll_interval: float = 0.5, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, retries, max_retry_wait, poll_interval)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport)
        self._sleep: Callable[[float], Any] = asyncio.sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, *, image: ImageSource | None = None, params: dict[str, str] | None = None,
                    stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            with _opened(image) as content:
                body = content if content is None or isinstance(content, bytes) else _chunks(content)
                request = self._http.build_request(method, path, content=body, params=params, headers=self._headers(image))
                try:
                    response = await self._http.send(request, stream=stream)
                except httpx.TransportError as exc:
                    raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from exc
            if response.status_code < 400:
                return response
            data = await response.aread()
            await response.aclose()
            headers = dict(response.headers)
            wait = retry_wait(response.status_code, headers, attempt, self.retries, self.max_retry_wait) if (
                image is None or rewindable(image)) else None
            if wait is None:
                raise error_from_response(response.status_code, data, headers)
            await self._sleep(wait)
            attempt += 1

    async def run(self, operation: str, image: ImageSource, **params: Any) -> bytes:
        check_operation(operation)
        return (await self._send("POST", f"/{operation}", image=image, params=query(params))).content

    async def denoise(self, image: ImageSource, *, sigma: float | str | None = None, model: str | None = None,
                      format: str | None = None) -> bytes:
        return await self.run("denoise", image, sigma=sigma, model=model, format=format)

    async def edges(self, image: ImageSource, *, thin: bool | None = None, threshold: float | None = None,
                    side: str | None = None, depth: int | None = None, format: str | None = None) -> bytes:
        return await self.run("edges", image, thin=thin, threshold=threshold, side=side, depth=depth, format=format)

    async def derain(self, image: ImageSource, *, format: str | None = None) -> bytes:
        return await self.run("derain", image, format=format)

    async def dehaze(self, image: ImageSource, *, format: str | None = None) -> bytes:
        return await self.run("dehaze", image, format=format)

    async def desnow(self, image: ImageSource, *, format: str | None = None) -> bytes:
        return await self.run("desnow", image, format=format)

    async def submit(self, operation: str, image: ImageSource, **params: Any) -> Job:
        check_operation(operation)
        return Job.from_json((await self._send("POST", f"/v1/jobs/{operation}", image=image, params=query(params))).json())

    async def job(self, job: Job | str) -> Job:
        return Job.from_json((await self._send("GET", f"/v1/jobs/{_job_id(job)}")).json())

    async def wait(self, job: Job | str, *, progress: ProgressCallback | None = None, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        current, seen = await self.job(job), None
        while True:
            if progress is not None and (current.status, current.done) != seen:
                seen = (current.status, current.done)
                progress(current)
            if current.finished:
                return _finished_or_raise(current)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {current.id} did not finish within {timeout} s")
            await asyncio.sleep(self.poll_interval)
            current = await self.job(current)

    async def result(self, job: Job | str, dest: str | os.PathLike[str] | None = None) -> bytes | None:
        response = await self._send("GET", f"/v1/jobs/{_job_id(job)}/result", stream=dest is not None)
        if dest is None:
            return response.content
        try:
            with open(Path(dest), "wb") as out:
                async for piece in response.aiter_bytes(CHUNK):
                    await asyncio.to_thread(out.write, piece)
        finally:
            await response.aclose()
        return None

    async def cancel(self, job: Job | str) -> None:
        await self._send("DELETE", f"/v1/jobs/{_job_id(job)}")

    async def process(self, operation: str, image: ImageSource, *, progress: ProgressCallback | None = None,
                      **params: Any) -> bytes:
        job = await self.submit(operation, image, **params)
        try:
            await self.wait(job, progress=progress)
            data = await self.result(job)
            assert data is not None
            return data
        finally:
            try:
                await self.cancel(job)
            except Exception:  # noqa: BLE001 - best effort: the service drops it when it expires anyway
                pass
