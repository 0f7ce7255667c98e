"""Pure ASGI middleware (no BaseHTTPMiddleware, which would break disconnect detection).

``RequestContext`` (outermost): request id, access log, request metrics, and a problem+json 500 for
anything that still escapes. ``RequestLimits``: request slots per client address and in all, and
a body that stalls or crawls ends in 408.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from restore.service.errors import Overloaded, RequestTimeout, ServiceError, ShuttingDown, as_service_error, problem_response
from restore.service.limits.clients import address_of
from restore.service.logs import request_id
from restore.service.metrics import Metrics

log = logging.getLogger("restore.service.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if _SAFE_ID.match(sent) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 499  # stays so when the client leaves before we answer
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"

        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            known = as_service_error(exc)  # a MemoryError raised where no handler sees it: 503
            if known is None:
                log.exception("unhandled error")  # the traceback goes to the log, never to the client
            status = 500 if known is None else known.status
            if responded:
                raise  # too late for a problem body: the server closes the connection
            error = known or ServiceError("an unexpected error occurred; it is logged under this request's X-Request-ID")
            await problem_response(error)(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # Only the server cancels a request's task, when RESTORE_SHUTDOWN_TIMEOUT_S runs out. Re-raised,
            # uvicorn would log it as a crash and write a plain-text 500; the task ends here either way.
            if responded:
                raise
            log.info("request cancelled by shutdown")
            await problem_response(ShuttingDown("the server is shutting down; retry on another replica"))(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            log.info(
                "request",
                extra={"method": scope["method"], "path": scope["path"], "status": status, "ms": round(seconds * 1000, 2)},
            )
            request_id.reset(token)


#: Scope extension the edge sets on a connection past RESTORE_MAX_CONNECTIONS (restore.service.server): such
#: a connection is for health checks and metrics only.
OPERATIONS_ONLY = "restore.operations_only"
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass
class Occupancy:
    """What the process holds open, counted where it is taken (the edge: connections; RequestLimits:
    model requests) and read by /readyz to say "saturated"."""

    connections: int = 0
    requests: int = 0  # model requests past their upload: decoding, queued, running, answering
    by_address: Counter[str] = field(default_factory=Counter)  # model requests open per address, uploads included


class RequestLimits:
    """Caps what model requests hold, in the order a request meets them:

    1. per client address, ``max_requests_per_client`` model requests open at once, from their
       headers to their answer, uploads included: beyond it 503 before a byte of body is read;
    2. the body must keep coming: no silence longer than ``body_timeout_s``, and after that grace
       period at least ``min_upload_rate`` bytes per second on average since the headers (a total
       deadline that grows with the bytes received, as Apache's mod_reqtimeout MinRate); else 408
       and the connection closes;
    3. once the whole body is in, one of ``max_requests`` slots (decoding, queued, running): 503
       beyond. No slot is taken while a body uploads, so 64 sockets trickling a byte every 20 s
       hold nothing that other clients' requests need, and are cut off by the rate.

    Uvicorn only bounds idle keep-alive connections; without (2) a client that sends headers and
    then a slow or missing body would hold its place (and its buffered bytes) for ever.
    Operations endpoints get (2) only.
    """

    def __init__(
        self, app: ASGIApp, *, limited: frozenset[str], occupancy: Occupancy, max_requests: int,
        max_requests_per_client: int, body_timeout_s: float, min_upload_rate: int, retry_after_s: int,
    ) -> None:
        self.app = app
        self.limited = limited
        self.occupancy = occupancy
        self.max_requests = max_requests
        self.max_requests_per_client = max_requests_per_client
        self.body_timeout_s = body_timeout_s
        self.min_upload_rate = min_upload_rate
        self.retry_after_s = retry_after_s

    def _overloaded(self, why: str) -> Overloaded:
        return Overloaded(f"{why}; retry shortly", headers={"Retry-After": str(self.retry_after_s)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if OPERATIONS_ONLY in scope.get("extensions", {}) and scope["path"] not in OPERATIONS_PATHS:
            error = self._overloaded("the server has its most connections open; this one may reach /healthz, /readyz and /metrics only")
            error.headers["Connection"] = "close"
            await problem_response(error)(scope, receive, send)
            return
        limited = scope["path"] in self.limited
        started = time.monotonic()
        body_done = slotted = False
        received = 0
        last = started  # when the body last moved

        async def receive_in_time() -> Message:
            nonlocal body_done, received, slotted, last
            if body_done:
                return await receive()
            message = await self._receive_body(receive, started, last, received)
            received += len(message.get("body", b""))
            last = time.monotonic()
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if body_done and limited and message["type"] == "http.request":
                occupancy = self.occupancy
                if occupancy.requests >= self.max_requests:
                    raise self._overloaded(f"{occupancy.requests} requests are in flight, the most this server takes")
                occupancy.requests += 1
                slotted = True
            return message

        if not limited:
            await self.app(scope, receive_in_time, send)
            return
        address = address_of(scope.get("client"))
        by_address = self.occupancy.by_address
        if by_address[address] >= self.max_requests_per_client:
            error = self._overloaded(f"this address has {by_address[address]} model requests open, the most one client may")
            await problem_response(error)(scope, receive, send)
            return
        by_address[address] += 1
        try:
            await self.app(scope, receive_in_time, send)
        finally:
            by_address[address] -= 1
            if not by_address[address]:
                del by_address[address]
            if slotted:
                self.occupancy.requests -= 1

    async def _receive_body(self, receive: Receive, started: float, last: float, received: int) -> Message:
        """The next body message, within the silence timeout (from ``last``) and the rate's deadline."""
        silence = last + self.body_timeout_s
        deadline = min(silence, started + self.body_timeout_s + received / self.min_upload_rate)
        try:
            if deadline <= time.monotonic():
                raise asyncio.TimeoutError
            return await asyncio.wait_for(receive(), deadline - time.monotonic())
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            now = time.monotonic()
            why = (
                f"the request body stalled or is too slow: {received} bytes in {now - started:.1f} s, none for the last "
                f"{now - last:.1f} s; it may pause at most {self.body_timeout_s:g} s, and after the first "
                f"{self.body_timeout_s:g} s it must average at least {self.min_upload_rate} bytes/s"
            )
            raise RequestTimeout(why, headers={"Connection": "close"}) from None
