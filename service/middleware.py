"""Pure ASGI middleware (no BaseHTTPMiddleware, which would break disconnect detection):
request id, access log, request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id
from service.metrics import Metrics

log = logging.getLogger("service.access")
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        finally:
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            log.info(
                "request",
                extra={"method": scope["method"], "path": scope["path"], "status": status, "ms": round(seconds * 1000, 2)},
            )
            request_id.reset(token)
