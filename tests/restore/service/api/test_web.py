"""src/restore/service/api/web.py: the page at /, its assets and the offline docs are served by this process with
the right types and caching, never reach outside their folders, and name no other host."""

from __future__ import annotations

import fnmatch
import re
import socket
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from restore.service.api import web
from restore.service.app import create_app
from restore.service.settings import Settings
from tests.conftest import REPO, asgi_scope, fake_engine, running_server, serve, write_fake_suite
from importlib.metadata import version

pytestmark = pytest.mark.anyio
PROBLEM = "application/problem+json"
PAGE_FILES = sorted(p.relative_to(web.PAGE_DIR).as_posix() for p in web.PAGE_DIR.rglob("*") if p.is_file())
#: src= and href= values in HTML, to follow every reference the page and the docs make.
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(models_dir=write_fake_suite(tmp_path_factory.mktemp("models")), api_keys=("page-key",))
    async with serve(settings, fake_engine) as c:
        yield c


async def test_the_page_is_served_at_the_root_with_its_policy(client: httpx.AsyncClient) -> None:
    """Without a key although keys are configured: the page holds no secret, its API calls send the key."""
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache" and response.headers["etag"]
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == (web.PAGE_DIR / "index.html").read_text()
    assert (await client.post("/denoise", content=b"x", headers={"Content-Type": "image/png"})).status_code == 401


async def test_every_reference_of_the_page_resolves_here(client: httpx.AsyncClient) -> None:
    """A renamed asset, or a link to a route that does not exist, fails here rather than in a browser."""
    html = (await client.get("/")).text
    references = [ref for ref in REFERENCE.findall(html) if not ref.startswith("#")]
    assert {"static/app.js", "static/style.css", "docs", "redoc"} <= set(references)
    for ref in references:
        assert "://" not in ref and not ref.startswith("//"), ref  # relative: works under a path prefix
        assert (await client.get(f"/{ref}")).status_code == 200, ref


@pytest.mark.parametrize("name", PAGE_FILES)
def test_page_files_name_no_other_host(name: str) -> None:
    """No CDN, font service or analytics: the CSP would block them, so a URL here is a broken page."""
    text = (web.PAGE_DIR / name).read_text()
    assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text, re.IGNORECASE), name


@pytest.mark.parametrize(
    "path,media_type",
    [
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        (f"{web.DOCS_ASSETS}/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        (f"{web.DOCS_ASSETS}/swagger-ui.css", "text/css; charset=utf-8"),
        (f"{web.DOCS_ASSETS}/redoc.standalone.js", "text/javascript; charset=utf-8"),
        (f"{web.DOCS_ASSETS}/favicon.png", "image/png"),
    ],
)
async def test_assets_have_their_content_type_and_nosniff(client: httpx.AsyncClient, path: str, media_type: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert int(response.headers["content-length"]) == len(response.content) > 0


async def test_page_assets_are_revalidated_and_answer_304(client: httpx.AsyncClient) -> None:
    """no-cache, not max-age: a deploy changes the page and its script together, and a browser holding
    yesterday's app.js with today's index.html would break; revalidation costs one 304."""
    first = await client.get("/static/app.js")
    assert first.headers["cache-control"] == "no-cache"
    again = await client.get("/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["cache-control"] == "no-cache" and again.headers["etag"] == first.headers["etag"]
    page = await client.get("/")
    assert (await client.get("/", headers={"If-None-Match": page.headers["etag"]})).status_code == 304


async def test_docs_assets_are_immutable_under_their_package_version(client: httpx.AsyncClient) -> None:
    """The URL carries fastapi-offline's version, so caching it for a year can never serve stale files."""
    assert web.DOCS_ASSETS == f"/docs/assets/{version('fastapi-offline')}"
    response = await client.get(f"{web.DOCS_ASSETS}/swagger-ui.css")
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (await client.get("/docs/assets/0.0.0/swagger-ui.css")).status_code == 404


@pytest.mark.parametrize("path,script", [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
async def test_docs_load_only_local_assets(client: httpx.AsyncClient, path: str, script: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
    references = REFERENCE.findall(response.text)
    assert f"{web.DOCS_ASSETS}/{script}" in references
    for ref in references:
        assert ref.startswith("/"), ref
        assert (await client.get(ref)).status_code == 200, ref
    assert "://" not in response.text  # no CDN, no Google Fonts (with_google_fonts=False)
    if path == "/docs":
        assert '"validatorUrl": null' in response.text  # Swagger UI's badge would fetch from validator.swagger.io
    assert (await client.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/static/missing.js", "/static/", f"{web.DOCS_ASSETS}/missing.js", "/static/app.js/x", "/index.html", "/static/index.html"],
)
async def test_missing_assets_are_problem_404s(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM and response.json()["status"] == 404


async def test_writes_to_assets_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/static/app.js", content=b"x")
    assert response.status_code == 405 and response.headers["content-type"] == PROBLEM


def test_the_page_and_docs_stay_out_of_the_openapi_schema(tmp_path: Path) -> None:
    schema = create_app(Settings(models_dir=write_fake_suite(tmp_path)), engine_factory=fake_engine).openapi()
    assert not {"/", "/docs", "/redoc"} & set(schema["paths"])
    assert not any(path.startswith(("/static", "/docs/")) for path in schema["paths"])


TRAVERSALS = [
    "/static/../index.html",
    "/static/../../web.py",
    "/static/../../../pyproject.toml",
    "/static/./../app.py",
    "/static/..\\web.py",
    "/static//etc/passwd",
    "/static/%2e%2e/%2e%2e/web.py",
    f"{web.DOCS_ASSETS}/../core.py",
    f"{web.DOCS_ASSETS}/../../fastapi_offline/core.py",
]


async def call_asgi(app: Any, path: str) -> tuple[int, bytes]:
    """Drive the app with ``path`` exactly as a server would pass it (no client normalises the dots)."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(asgi_scope(path, [(b"host", b"test")], method="GET"), receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_no_path_leaves_the_asset_folders(tmp_path: Path, path: str) -> None:
    app = create_app(Settings(models_dir=write_fake_suite(tmp_path)), engine_factory=fake_engine)
    status, body = await call_asgi(app, path)
    assert status == 404, body[:200]
    assert b"import" not in body and b"root:" not in body and b"<!doctype" not in body


def test_no_path_leaves_the_asset_folders_through_the_http_server(tmp_path: Path) -> None:
    """The same over a socket: uvicorn decodes %2e%2e and %2f into the path before the app sees it."""
    raw_paths = [
        "/static/../../web.py", "/static/%2e%2e/%2e%2e/web.py", "/static/..%2f..%2fweb.py", "/static/%2e%2e%2findex.html",
        "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
    ]
    with running_server(Settings(models_dir=write_fake_suite(tmp_path))) as running:
        for raw in raw_paths:
            with socket.create_connection(running.address, timeout=10) as sock:
                sock.sendall(f"GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            status = int(data.split(b" ", 2)[1])
            assert status in (400, 404), (raw, data[:300])
            assert b"import" not in data and b"<!doctype" not in data, raw


def test_package_data_ships_every_page_file() -> None:
    """pip install and the wheel carry src/restore/service/api/static only through this glob; a new subfolder or
    file type it misses would install a page with a broken asset."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["restore.service.api"]
    for path in web.PAGE_DIR.rglob("*"):
        if path.is_file():
            relative = path.relative_to(web.PAGE_DIR.parent).as_posix()
            assert any(fnmatch.fnmatch(relative, pattern) and relative.count("/") == pattern.count("/") for pattern in patterns), relative
