"""The HTTP edge: uvicorn set up so that no client can hold the server, and every refusal is problem+json.

Uvicorn by itself bounds only idle keep-alive connections: a connection that sends nothing, or
trickles its headers, is kept for ever, and its httptools parser takes headers of any size (64 MB
stalled /healthz for seconds). ``EdgeProtocol`` is uvicorn's h11 protocol, whose header-size cap is
built in, plus:

* a deadline for the request line and headers, from a new connection or from the first byte of the
  next request (408, then close);
* the header cap enforced on the whole head: h11 checks only a head still incomplete, so a 70 KB
  head that arrives complete would pass a 64 KiB cap (431, then close);
* caps on open connections: ``max_connections_per_client`` from one address (trusted proxies,
  ``RESTORE_FORWARDED_ALLOW_IPS``, are exempt: they carry many clients), and ``max_connections``
  in all, past which ``operations_connections`` more are let in for /healthz, /readyz and /metrics
  only (``middleware.OPERATIONS_ONLY``), so 256 idle sockets never make a liveness probe fail
  and get the process restarted; one more than that is answered 503 with Retry-After and closed;
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
from uvicorn.middleware.proxy_headers import _TrustedHosts  # uvicorn's own parser of FORWARDED_ALLOW_IPS
from uvicorn.protocols.http.h11_impl import H11Protocol

from restore.service.errors import PROBLEM_JSON, HeadersTooLarge, MalformedRequest, Overloaded, RequestTimeout, ServiceError
from restore.service.logs import request_id
from restore.service.metrics import Metrics
from restore.service.middleware import OPERATIONS_ONLY, Occupancy
from restore.service.settings import Settings

log = logging.getLogger("restore.service.access")


class EdgeProtocol(H11Protocol):
    def __init__(
        self, *args: Any, settings: Settings, metrics: Metrics, occupancy: Occupancy, trusted: _TrustedHosts, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.metrics = metrics
        self.occupancy = occupancy
        self.trusted = trusted
        self._opened = time.perf_counter()
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        settings, open_now = self.settings, len(self.connections)
        self.occupancy.connections = open_now
        retry = {"Retry-After": str(settings.retry_after_s)}
        if open_now > settings.max_connections + settings.operations_connections:
            self._refuse(Overloaded(f"{open_now - 1} connections are open, the most this server takes; retry shortly", headers=retry))
            return
        host = self.client[0] if self.client else None
        if host is not None and host not in self.trusted:
            mine = sum(1 for other in self.connections if getattr(other, "client", None) and other.client[0] == host)
            if mine > settings.max_connections_per_client:
                self._refuse(Overloaded(
                    f"{mine - 1} connections are open from this address, the most one client may; retry shortly", headers=retry,
                ))
                return
        if open_now > settings.max_connections:  # the operations lane: health checks and metrics only
            self.app = functools.partial(_operations_only, self.app)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)
        self.occupancy.connections = len(self.connections)

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and self._head_too_large(data):
            return
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request line and its headers are in: the app has it now
            self._disarm_header_deadline()
        elif between_requests and self._header_deadline is None:
            self._arm_header_deadline()

    def _head_too_large(self, data: bytes) -> bool:
        """431 when the request line and headers (all of them, complete or not) pass the cap."""
        buffered = self.conn.trailing_data[0] + data
        end = buffered.find(b"\r\n\r\n")
        size = len(buffered) if end < 0 else end + 4
        if size <= self.settings.max_header_bytes:
            return False
        self._refuse(HeadersTooLarge(f"the request line and headers exceed {self.settings.max_header_bytes} bytes"))
        return True

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


async def _operations_only(app: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app as a connection in the operations lane sees it: marked, so RequestLimits answers
    anything but /healthz, /readyz and /metrics with 503 (logged and counted like any request)."""
    scope.setdefault("extensions", {})[OPERATIONS_ONLY] = {}
    await app(scope, receive, send)


def trusted_proxies(settings: Settings) -> list[str]:
    return [part.strip() for part in settings.forwarded_allow_ips.split(",") if part.strip()]


def config(app: FastAPI, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """One worker (the in-process batcher owns the device), our logging, the edge limits above."""
    metrics: Metrics = app.state.runtime.metrics
    proxies = trusted_proxies(settings)
    protocol = functools.partial(
        EdgeProtocol, settings=settings, metrics=metrics, occupancy=app.state.occupancy, trusted=_TrustedHosts(proxies)
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,  # type: ignore[arg-type]
        proxy_headers=True,
        forwarded_allow_ips=proxies,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        workers=1,
    )
