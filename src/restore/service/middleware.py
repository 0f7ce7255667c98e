"""Pure ASGI middleware (no BaseHTTPMiddleware, which would break disconnect detection).

``RequestContext`` (outermost): request id, access log, request metrics, and a problem+json 500 for
anything that still escapes. ``RequestLimits``: at most ``max_requests`` model requests in flight
(503 with Retry-After beyond), and a body that stalls for ``body_timeout_s`` ends in 408.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from restore.service.errors import Overloaded, RequestTimeout, ServiceError, ShuttingDown, problem_response
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
        except Exception:
            log.exception("unhandled error")  # the traceback goes to the log, never to the client
            status = 500
            if responded:
                raise  # too late for a problem body: the server closes the connection
            error = ServiceError("an unexpected error occurred; it is logged under this request's X-Request-ID")
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


class RequestLimits:
    """Caps what one process holds open: model requests in flight, and how long a body may stall.

    Uvicorn only bounds idle keep-alive connections; a client that sends headers and then a slow or
    missing body would otherwise hold its slot (and its buffered bytes) for ever.
    """

    def __init__(self, app: ASGIApp, *, limited: frozenset[str], max_requests: int, body_timeout_s: float, retry_after_s: int) -> None:
        self.app = app
        self.limited = limited
        self.max_requests = max_requests
        self.body_timeout_s = body_timeout_s
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                raise RequestTimeout(
                    f"the request body stalled: no bytes for {self.body_timeout_s:g} s", headers={"Connection": "close"}
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        if scope["path"] not in self.limited:
            await self.app(scope, receive_in_time, send)
            return
        if self.in_flight >= self.max_requests:
            error = Overloaded(
                f"{self.in_flight} requests are in flight, the most this server takes; retry shortly",
                headers={"Retry-After": str(self.retry_after_s)},
            )
            await problem_response(error)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive_in_time, send)
        finally:
            self.in_flight -= 1
