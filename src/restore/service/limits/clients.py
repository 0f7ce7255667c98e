"""Who sent a request, for the limits each client gets a share of.

A client is its API key when keys are configured (``key:`` and a digest of the key: the same
owner a job is filed under), else its address (``addr:`` and the IP). Behind a reverse proxy the
address is the proxy's unless the proxy is trusted to name the client
(``RESTORE_FORWARDED_ALLOW_IPS``, uvicorn's X-Forwarded-For handling): otherwise every client
shares one address's share. Nothing here knows the limits; budgets, the request slots and the
job store count per client.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from restore.service.errors import Unauthorized
from restore.service.settings import Settings


def api_key_owner(request: Request) -> str | None:
    """Who sent the request: a digest of its valid API key (a job is visible only to the key that
    created it), None when no keys are configured; 401 without a valid key.

    Compared as bytes: hmac.compare_digest refuses non-ASCII str, and a header is bytes on the wire
    (Starlette decodes it as latin-1, so encoding back gives exactly what the client sent)."""
    settings: Settings = request.app.state.runtime.settings
    keys = settings.api_keys
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    sent = token.strip().encode("latin-1")
    if scheme.lower() == "bearer":
        for key in keys:
            encoded = key.encode("utf-8", "surrogateescape")
            if hmac.compare_digest(sent, encoded):
                return hashlib.sha256(encoded).hexdigest()
    raise Unauthorized("send Authorization: Bearer <api key>", headers={"WWW-Authenticate": "Bearer"})


def address_of(client: tuple[str, int] | list[object] | None) -> str:
    """An ASGI scope's ``client`` as the address every per-address limit counts under."""
    return f"addr:{client[0]}" if client else "addr:unknown"


def client_of(request: Request) -> str:
    """The client a request's budgets and jobs count against: its key, or its address without keys."""
    owner = api_key_owner(request)
    return f"key:{owner}" if owner is not None else address_of(request.scope.get("client"))
