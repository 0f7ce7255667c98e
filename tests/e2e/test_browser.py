"""The page at / and the API docs in a real browser (tests/e2e/browser.py: Debian's chromium under
Playwright), against the live test server with fake models and API keys on, every request to
another host aborted and recorded: the page and the docs must work with no network at all."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from restore.service.api import web
from restore.service.settings import Settings
from tests.conftest import BoxEngine, Running, encode_pil, noisy_image, running_server, write_fake_manifest, write_fake_suite
from tests.e2e.browser import block_outside, chromium, require_browser

if TYPE_CHECKING:  # names only: this module imports without the dev extra, and then skips
    from playwright.sync_api import Browser, Page, Request

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
KEY = "browser-key"
TIMEOUT_MS = 180_000  # a busy 2-core machine (training, other suites): the models are fake, the rest is not
#: Chromium logs every non-2xx fetch as a console error without its URL; responses are checked by URL
#: instead (the test's deliberate request without a key is a 401).
LOAD_FAILED = re.compile(r"Failed to load resource: ")
#: ReDoc 2 always requests its attribution logo from cdn.redoc.ly; /redoc's CSP refuses it (src/restore/service/api/web.py).
#: Chromium reports it as a console error and a failed request ("csp"), never as a request that left.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # a busy 2-core machine: fake models are quick, the first page load is not


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_browser()  # skip (or fail under REQUIRE_BROWSER=1) before starting anything
    settings = Settings(models_dir=write_fake_suite(tmp_path_factory.mktemp("models")), tile_size=64, tile_overlap=2, api_keys=(KEY,))
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as instance:
        yield instance


def aborted_poll(request: Request) -> bool:
    return request.failure == "net::ERR_ABORTED" and request.method == "GET" and urlsplit(request.url).path.startswith("/v1/jobs/")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context per test (no key left in sessionStorage), failing on any script error or CSP
    violation the page reports to the console. The page's CSP stays on (no bypass_csp); waits use
    selectors, and wait_for_function only where a reading must be taken at one instant (Playwright
    runs it through the DevTools protocol, which the page's script-src does not restrict).
    Not an error: a job poll the page aborts itself (cancel aborts the fetch in flight), which the
    browser reports as net::ERR_ABORTED."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" and not (LOAD_FAILED.match(message.text) or REDOC_LOGO in message.text) else None)
    tab.on("response", lambda response: errors.append(f"{response.status} {response.url}") if response.status >= 400 and response.status != 401 else None)
    tab.on("requestfailed", lambda request: errors.append(f"{request.failure} {request.url}") if request.url != REDOC_LOGO and not aborted_poll(request) else None)
    yield tab
    context.close()
    assert not errors, errors


def run_and_download(page: Page, *, click: bool = True) -> bytes:
    if click:
        page.click("#run")
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_selector("#status:has-text('Done.')")
    with page.expect_download() as download:
        page.click("#download")
    path = download.value.path()
    return Path(path).read_bytes()


def api(server: Running, path: str, body: bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"}
    response = httpx.post(f"{server.base}{path}", content=body, headers=headers, timeout=TIMEOUT_MS / 1000)
    assert response.status_code == 200, response.text
    return response


def test_upload_compare_and_download_equals_the_api(server: Running, page: Page) -> None:
    blocked = block_outside(page)
    png = encode_pil(noisy_image(48, 80, 1, seed=3), "PNG")  # gray: the fake suite's sigma 25 model is gray
    page.goto(f"{server.base}/")
    page.set_input_files("#file", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": png}])
    page.wait_for_selector("#status:has-text('scene.png')")

    # No key yet: the server's 401 becomes a message, and focus goes to the key field.
    page.click("#run")
    page.wait_for_selector("#status:has-text('needs an API key')")
    assert page.evaluate("document.activeElement.id") == "key"
    assert page.get_attribute("#key", "aria-invalid") == "true"
    page.fill("#key", KEY)

    page.select_option("#sigma", "25")
    page.select_option("#format", "png")
    downloaded = run_and_download(page)
    assert downloaded == api(server, "/denoise?sigma=25&format=png", png).content
    details = page.text_content("#details") or ""
    assert "gray-s25" in details  # X-Model, shown
    assert re.search(r"Time on the server\s*decode \d+\.\d s, queue \d+\.\d s, inference \d+\.\d s, encode \d+\.\d s", details), details
    assert page.get_attribute("#download", "download") == "scene-denoise.png"

    # The slider is keyboard-operable and moves the divider.
    page.focus("#slider")
    page.keyboard.press("Home")
    assert page.input_value("#slider") == "0"
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    assert page.input_value("#slider") == "3"
    assert page.evaluate("getComputedStyle(document.getElementById('compare')).getPropertyValue('--split').trim()") == "3%"
    assert page.get_attribute("#slider", "aria-valuetext") == "3% input, 97% result"
    assert page.evaluate("document.getElementById('after').naturalWidth") == 80  # the result is shown

    # Another operation with its options, in the same page.
    page.select_option("#operation", "edges")
    assert page.is_hidden("#options-denoise") and page.is_visible("#options-edges")
    page.check("#thin")
    page.select_option("#side", "2")
    downloaded = run_and_download(page)
    assert downloaded == api(server, "/edges?thin=true&side=2&format=png", png).content
    assert page.is_hidden("#weather-note")
    page.select_option("#operation", "derain")  # the weather routes say they are experimental, with their gains
    assert page.is_visible("#weather-note") and "Experimental" in (page.text_content("#weather-note") or "")
    assert blocked == []


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Batches of one 256 px tile that take 0.25 s each: a 1 MP image is 16 tiles and runs for
    seconds, long enough to watch its progress and to cancel it. Few big tiles rather than many
    small ones: the per-tile work of the server (blending, scheduling) is what a busy CPU slows."""
    require_browser()
    settings = Settings(
        models_dir=write_fake_suite(tmp_path_factory.mktemp("models")), tile_size=256, tile_overlap=2, batch_seconds=0,
        max_batch=1, api_keys=(KEY,),
    )
    with running_server(settings, lambda spec: BoxEngine(radius=1, delay=0.25, outputs=6 if spec.task == "edges" else None)) as running:
        yield running


#: Returns the status text, the progress bar's value and whether the bar and the cancel button are
#: visible, once the status shows tile progress (null before: wait_for_function keeps polling).
PROGRESS_SNAPSHOT = """() => {
  const text = document.getElementById('status').textContent || '';
  if (!/^Restoring: \\d+ of \\d+ tiles/.test(text)) return null;
  const visible = (id) => {
    const element = document.getElementById(id);
    const box = element.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && getComputedStyle(element).visibility !== 'hidden';
  };
  return {text, value: document.getElementById('progress').value,
          progress_visible: visible('progress'), cancel_visible: visible('cancel')};
}"""


def watch_requests(page: Page) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda request: seen.append(f"{request.method} {urlsplit(request.url).path}"))
    return seen


def test_a_big_image_goes_through_the_job_api_with_progress(slow_server: Running, page: Page) -> None:
    """1 MP or more: POST /v1/jobs/denoise, polled with tiles shown, the result fetched, then deleted
    on the server; the download is still exactly the synchronous route's output."""
    blocked = block_outside(page)
    requests = watch_requests(page)
    png = encode_pil(noisy_image(1000, 1000, 1, seed=4), "PNG")
    page.goto(f"{slow_server.base}/")
    page.fill("#key", KEY)
    page.set_input_files("#file", files=[{"name": "big.png", "mimeType": "image/png", "buffer": png}])
    page.wait_for_selector("#status:has-text('is ready')")
    page.click("#run")
    # One snapshot taken in the page at the moment progress shows: on a busy machine the job can
    # finish between a wait and a later read, which then sees "Downloading..." instead.
    snapshot = page.wait_for_function(PROGRESS_SNAPSHOT).json_value()
    done, total = map(int, re.fullmatch(r"Restoring: (\d+) of (\d+) tiles \(\d+%\)", snapshot["text"]).groups())  # type: ignore[union-attr]
    assert 0 <= done < total and total >= 9
    assert 0 <= float(snapshot["value"]) < 1
    assert snapshot["progress_visible"] and snapshot["cancel_visible"]
    downloaded = run_and_download(page, click=False)
    assert downloaded == api(slow_server, "/denoise", png).content
    assert "POST /v1/jobs/denoise" in requests and "POST /denoise" not in requests
    job_paths = [r.split(" ", 1)[1] for r in requests if r.startswith("GET /v1/jobs/") and r.endswith("/result")]
    assert len(job_paths) == 1
    page.wait_for_timeout(500)  # the page deletes the job once it holds the result
    assert any(r == f"DELETE {job_paths[0].removesuffix('/result')}" for r in requests)
    gone = httpx.get(f"{slow_server.base}{job_paths[0]}", headers={"Authorization": f"Bearer {KEY}"})
    assert gone.status_code in (404, 410)
    assert blocked == []


def test_cancel_stops_the_job_on_the_server(slow_server: Running, page: Page) -> None:
    requests = watch_requests(page)
    png = encode_pil(noisy_image(1000, 1000, 1, seed=5), "PNG")
    page.goto(f"{slow_server.base}/")
    page.fill("#key", KEY)
    page.set_input_files("#file", files=[{"name": "big.png", "mimeType": "image/png", "buffer": png}])
    page.wait_for_selector("#status:has-text('is ready')")
    page.click("#run")
    page.wait_for_selector("#status:has-text('Restoring: ')")
    page.click("#cancel")
    page.wait_for_selector("#status:has-text('Cancelled.')")
    assert page.is_hidden("#cancel") and page.is_enabled("#run") and page.is_hidden("#result")
    polled = next(r.split(" ", 1)[1] for r in requests if r.startswith("GET /v1/jobs/"))
    assert f"DELETE {polled}" in requests
    job = httpx.get(f"{slow_server.base}{polled}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert job["status"] == "cancelled" and job["progress"]["done"] < job["progress"]["total"]


def test_controls_are_labelled_and_images_have_alt_text(server: Running, page: Page) -> None:
    """Every form control has a label a screen reader announces, and the tab order follows the form."""
    page.goto(f"{server.base}/")
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, button')]
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
            .map((el) => el.id)"""
    )
    assert unlabelled == []
    assert page.evaluate("[...document.images].every((img) => img.alt.trim().length > 0)")
    order = []
    for _ in range(9):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert order[:2] == ["API docs (Swagger UI)", "ReDoc"]
    assert order[2:8] == ["file", "operation", "sigma", "format", "key", "run"]


def test_operations_without_a_model_are_disabled(tmp_path: Path, browser: Browser) -> None:
    """The page reads /v1/models: a server with only the denoisers offers no edges or weather."""
    models = write_fake_manifest(tmp_path, [{"name": "gray"}, {"name": "gray-s15", "sigma": 15}])
    with running_server(Settings(models_dir=models, tile_size=64, tile_overlap=2)) as running:
        context = browser.new_context()
        tab = context.new_page()
        tab.goto(f"{running.base}/")
        tab.wait_for_selector("#operation option[value=edges][disabled]", state="attached")
        assert tab.evaluate("[...document.querySelectorAll('#operation option')].filter((o) => !o.disabled).map((o) => o.value)") == ["denoise"]
        assert tab.evaluate("[...document.querySelectorAll('#sigma option')].map((o) => o.value)") == ["", "blind", "15"]
        context.close()


@pytest.mark.parametrize("path,ready", [("/docs", ".swagger-ui .opblock"), ("/redoc", ".redoc-wrap [data-section-id]")])
def test_docs_render_with_the_network_blocked(server: Running, page: Page, path: str, ready: str) -> None:
    blocked = block_outside(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{server.base}{path}")
    page.wait_for_selector(ready)
    text = page.text_content("body") or ""
    assert "restore" in text and "/denoise" in text
    assert blocked == []
    assert any(url.endswith(f"{web.DOCS_ASSETS}/{'swagger-ui-bundle.js' if path == '/docs' else 'redoc.standalone.js'}") for url in requested)
