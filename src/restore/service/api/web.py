"""The web page at ``/`` and the offline API docs at ``/docs`` and ``/redoc``.

Everything a browser loads comes from this process: the page is ``src/restore/service/api/static/`` (plain HTML,
JS and CSS in the package, no build step), and Swagger UI 5 and ReDoc 2 come from the
``fastapi-offline`` package (MIT; it ships ``swagger-ui-bundle.js``, ``swagger-ui.css`` and
``redoc.standalone.js``), so the docs are not a blank page on a machine without internet, as
FastAPI's CDN defaults are.

URLs and caching:

    /                              index.html    no-cache (revalidated: ETag, 304)
    /static/{file}                 the page's    no-cache: a deploy changes page and assets together,
                                   JS and CSS    and revalidation costs one 304 (src/restore/service/api/static/assets/,
                                                 apart from index.html, which has no second URL)
    /docs, /redoc                  HTML          no-cache
    /docs/assets/{version}/{file}  Swagger UI,   a year, immutable: the URL carries the package's
                                   ReDoc         version, so a new version is a new URL

A missing asset is the usual problem+json 404; Starlette's StaticFiles refuses any path that
resolves outside its folder (``..``, encoded or not, absolute paths, symlinks out).
"""

from __future__ import annotations

import importlib.metadata
import os
from importlib import resources
from pathlib import Path
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

PAGE_DIR = Path(__file__).resolve().parent / "static"
ASSETS_DIR = PAGE_DIR / "assets"
DOCS_DIR = Path(str(resources.files("fastapi_offline") / "static"))
DOCS_VERSION = importlib.metadata.version("fastapi-offline")
DOCS_ASSETS = f"/docs/assets/{DOCS_VERSION}"

REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
#: The page loads only what this origin serves: a script or image from elsewhere (a CDN slipped in
#: by an edit) is blocked by the browser, not just absent from the repository. blob: and data: are
#: the user's own image and the result, shown without a round trip.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
#: The docs pages under the same rule: Swagger UI's page (FastAPI's template) has one inline script,
#: and both inject inline styles. ReDoc 2 always shows the Redocly logo from cdn.redoc.ly (no option
#: turns it off); refused here, its onError hides it, and nothing leaves the machine.
SWAGGER_POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
REDOC_POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
#: Swagger UI's validator badge would fetch an image from validator.swagger.io for a non-local spec URL.
SWAGGER_PARAMETERS = {"validatorUrl": None}


class Assets(StaticFiles):
    """StaticFiles with an explicit Content-Type per suffix (mimetypes differs between Python
    versions and /etc/mime.types files: .js was application/javascript before 3.12), a
    Cache-Control policy, and nosniff so a browser never runs a file as something else."""

    MEDIA_TYPES: ClassVar[dict[str, str]] = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".png": "image/png",
        ".svg": "image/svg+xml",
    }

    def __init__(self, directory: Path, cache_control: str) -> None:
        super().__init__(directory=directory)
        self.cache_control = cache_control

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = self.MEDIA_TYPES.get(Path(full_path).suffix.lower())
        if media_type is not None and response.status_code == 200:
            response.headers["Content-Type"] = media_type
        response.headers["Cache-Control"] = self.cache_control
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def add_web(app: FastAPI) -> None:
    """Mount the page, its assets and the docs on ``app`` (built with docs_url=redoc_url=None)."""
    page = Assets(PAGE_DIR, REVALIDATE)
    app.mount(DOCS_ASSETS, Assets(DOCS_DIR, IMMUTABLE), name="docs-assets")
    app.mount("/static", Assets(ASSETS_DIR, REVALIDATE), name="static")

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        response = await page.get_response("index.html", request.scope)
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        response = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **SWAGGER_PARAMETERS},
        )
        response.headers["Cache-Control"] = REVALIDATE
        response.headers["Content-Security-Policy"] = SWAGGER_POLICY
        return response

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        response = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        response.headers["Cache-Control"] = REVALIDATE
        response.headers["Content-Security-Policy"] = REDOC_POLICY
        return response
