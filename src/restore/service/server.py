"""The HTTP edge: uvicorn set up so that no client can hold the server, and every refusal is problem+json.

Uvicorn by itself bounds only idle keep-alive connections: a connection that sends nothing, or
trickles its headers, is kept for ever, and its httptools parser takes headers of any size (64 MB
stalled /healthz for seconds). ``EdgeProtocol`` is uvicorn's h11 protocol, whose header-size cap is
built in, plus:

* a deadline for the request line and headers, from a new connection or from the first byte of the
  next request (408, then close);
* a cap on open connections (503 with Retry-After, then close);
* problem+json with an X-Request-ID for the answers uvicorn writes itself (400 malformed HTTP,
  431 headers too large), logged and counted like any other request.

Stalled bodies and the cap on requests in flight are per request: ``middleware.RequestLimits``.
SIGTERM lets requests in flight finish for ``RESTORE_SHUTDOWN_TIMEOUT_S``, then cancels them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from restore.service.errors import PROBLEM_JSON, HeadersTooLarge, MalformedRequest, Overloaded, RequestTimeout, ServiceError
from restore.service.logs import request_id
from restore.service.metrics import Metrics
from restore.service.settings import Settings

log = logging.getLogger("restore.service.access")


class EdgeProtocol(H11Protocol):
    def __init__(self, *args: Any, settings: Settings, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.metrics = metrics
        self._opened = time.perf_counter()
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.settings.max_connections:
            self._refuse(Overloaded(
                f"{len(self.connections) - 1} connections are open, the most this server takes; retry shortly",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ))
            return
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request line and its headers are in: the app has it now
            self._disarm_header_deadline()
        elif between_requests and self._header_deadline is None:
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """h11 refused the bytes; a receive buffer past the cap means the headers were too large."""
        buffered = len(self.conn.trailing_data[0])
        if buffered > self.settings.max_header_bytes:
            self._refuse(HeadersTooLarge(f"the request line and headers exceed {self.settings.max_header_bytes} bytes"))
        else:
            self._refuse(MalformedRequest("the request is not valid HTTP/1.1"))

    def _arm_header_deadline(self) -> None:
        if not self.transport.is_closing():
            self._opened = time.perf_counter()
            self._header_deadline = self.loop.call_later(self.settings.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(RequestTimeout(f"no complete request line and headers within {self.settings.header_timeout_s:g} s"))

    def _refuse(self, error: ServiceError) -> None:
        """Answer before (or instead of) a request the app could see, then close the connection."""
        self._disarm_header_deadline()
        if self.transport.is_closing():
            return
        rid = uuid.uuid4().hex
        body = json.dumps(error.problem()).encode()
        headers = {
            "Content-Type": PROBLEM_JSON, "Content-Length": str(len(body)), "Connection": "close", "X-Request-ID": rid,
            **error.headers,
        }
        head = f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.transport.write(head.encode("latin-1") + b"\r\n" + body)
        self.transport.close()
        token = request_id.set(rid)
        try:
            self.metrics.requests.labels("other", str(error.status)).inc()
            log.info("request", extra={"method": "-", "path": "-", "status": error.status,
                                       "ms": round((time.perf_counter() - self._opened) * 1000, 2), "detail": error.detail})
        finally:
            request_id.reset(token)


def config(app: FastAPI, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """One worker (the in-process batcher owns the device), our logging, the edge limits above."""
    metrics: Metrics = app.state.runtime.metrics
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=functools.partial(EdgeProtocol, settings=settings, metrics=metrics),  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        workers=1,
    )
