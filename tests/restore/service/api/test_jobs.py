"""The job API contract (src/restore/service/api/jobs.py, src/restore/service/jobs.py): submit, poll, result equal to the
synchronous route's, cancel, expiry, bounds, every refusal before the 202, and key isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from restore.core.manifest import ModelSpec
from restore.service.settings import Settings
from tests.conftest import BoxEngine, encode_pil, noisy_image, serve, write_fake_suite
from tests.restore.service.images.test_codecs import short_jpeg

pytestmark = pytest.mark.anyio
PROBLEM = "application/problem+json"
PNG = encode_pil(noisy_image(100, 130, 3), "PNG")  # 6 tiles of the fake models at tile_size=64


class StepEngine(BoxEngine):
    """Runs one batch per permit once ``permits`` is set, so a test knows how many tiles are done."""

    permits: threading.Semaphore | None = None

    def infer(self, batch: Any) -> Any:
        if self.permits is not None:
            self.permits.acquire(timeout=30)
        return super().infer(batch)


class Engines:
    """The fake suite's engines (as conftest.fake_engine makes them), kept so a test can hold their batches."""

    def __init__(self) -> None:
        self.made: dict[str, StepEngine] = {}
        self.permits = threading.Semaphore(0)

    def __call__(self, spec: ModelSpec) -> StepEngine:
        engine = StepEngine(radius=1, outputs=6 if spec.task == "edges" else None)
        self.made[spec.name] = engine
        return engine

    def hold(self) -> threading.Semaphore:
        """From now on every batch waits for ``release()`` (after the warm-up, which ran unheld)."""
        for engine in self.made.values():
            engine.permits = self.permits
        return self.permits


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        models_dir=write_fake_suite(tmp_path / "models"), tile_size=64, tile_overlap=2, jobs_dir=tmp_path / "jobs", **overrides
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings_for(tmp_path), Engines()) as c:
        yield c


async def finished(
    client: httpx.AsyncClient, url: str, timeout: float = 30, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    for _ in range(int(timeout / 0.02)):
        job: dict[str, Any] = (await client.get(url, headers=headers)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {url} never finished")


async def until(predicate: Any, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


@pytest.mark.parametrize(
    "path,query",
    [("denoise", ""), ("denoise", "?format=webp"), ("edges", "?thin=true&threshold=0.4"), ("edges", "?depth=16"),
     ("derain", ""), ("dehaze", "?format=jpeg"), ("desnow", "")],
)
async def test_a_job_returns_what_the_synchronous_route_returns(client: httpx.AsyncClient, path: str, query: str) -> None:
    submitted = await client.post(f"/v1/jobs/{path}{query}", content=PNG, headers={"Content-Type": "image/png"})
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert submitted.headers["location"] == job["url"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running") and job["operation"] == path
    assert job["progress"]["total"] == 6 and len(job["id"]) >= 22
    done = await finished(client, job["url"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"done": 6, "total": 6, "fraction": 1.0}
    assert set(done["timings"]) >= {"decode", "queue", "infer", "encode"}
    assert done["finished_at"] >= done["started_at"] >= done["created_at"] and done["expires_at"] > done["finished_at"]
    result = await client.get(done["result"]["url"])
    sync = await client.post(f"/{path}{query}", content=PNG, headers={"Content-Type": "image/png"})
    assert result.status_code == sync.status_code == 200
    assert result.content == sync.content
    assert result.headers["content-type"] == sync.headers["content-type"] == done["result"]["media_type"]
    assert result.headers["x-model"] == sync.headers["x-model"] == done["model"]
    assert int(result.headers["content-length"]) == done["result"]["bytes"] == len(sync.content)


@pytest.mark.parametrize(
    "path,body,headers,status",
    [
        ("/denoise", PNG[: len(PNG) // 2], {"Content-Type": "image/png"}, 422),  # truncated: found only by decoding
        ("/denoise", b"GIF89a" + bytes(64), {"Content-Type": "image/gif"}, 415),
        ("/denoise", b"", {"Content-Type": "image/png"}, 422),
        ("/denoise?sigma=17", PNG, {}, 422),
        ("/denoise?sigmaa=25", PNG, {}, 422),
        ("/denoise?format=gif", PNG, {}, 422),
        ("/edges?depth=16&format=jpeg", PNG, {}, 422),
        ("/derain", PNG + bytes(3 * 1024 * 1024), {"Content-Type": "image/png"}, 413),
    ],
    ids=["truncated", "gif", "empty", "sigma", "unknown-query", "format", "depth-format", "too-large"],
)
async def test_refusals_come_before_the_202_with_the_synchronous_status(
    tmp_path: Path, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    async with serve(settings_for(tmp_path, max_body_bytes=2 * 1024 * 1024), Engines()) as client:
        sync = await client.post(path, content=body, headers=headers)
        job = await client.post(f"/v1/jobs{path}", content=body, headers=headers)
        assert sync.status_code == job.status_code == status, job.text
        assert job.headers["content-type"] == PROBLEM and "location" not in job.headers
        assert job.json()["type"] == sync.json()["type"]
        metrics = (await client.get("/metrics")).text
        assert 'restore_jobs{status="queued"} 0.0' in metrics and 'restore_jobs{status="succeeded"} 0.0' in metrics


async def test_the_job_accept_header_is_for_its_json_not_the_image(client: httpx.AsyncClient) -> None:
    submitted = await client.post("/v1/jobs/denoise", content=PNG, headers={"Accept": "application/json"})
    assert submitted.status_code == 202
    done = await finished(client, submitted.headers["location"])
    assert done["result"]["media_type"] == "image/png"  # the input's format, as /denoise without Accept


async def test_unknown_ids_are_404_and_unknown_operations_405_problems(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/v1/jobs/nope"),
        await client.get("/v1/jobs/nope/result"),
        await client.delete("/v1/jobs/nope"),
    ):
        assert response.status_code == 404 and response.headers["content-type"] == PROBLEM, response.text
    wrong = await client.post("/v1/jobs/sharpen", content=PNG)  # /v1/jobs/{id} takes GET and DELETE
    assert wrong.status_code == 405 and wrong.headers["content-type"] == PROBLEM
    assert wrong.headers["allow"] == "DELETE, GET"


async def test_progress_then_cancel_gives_back_the_queue_place_and_budgets(tmp_path: Path) -> None:
    engines = Engines()
    async with serve(settings_for(tmp_path, max_batch=1), engines) as client:
        permits = engines.hold()
        before = len(engines.made["colour"].batches)  # warm-up and speed probe
        url = (await client.post("/v1/jobs/denoise", content=PNG)).headers["location"]
        early = await client.get(f"{url}/result")
        assert early.status_code == 409 and early.headers["content-type"] == PROBLEM
        permits.release(2)  # two tiles (max_batch=1) go through; the third waits in the engine
        for _ in range(500):
            job = (await client.get(url)).json()
            if job["progress"]["done"] == 2:
                break
            await asyncio.sleep(0.01)
        assert job["status"] == "running" and job["progress"] == {"done": 2, "total": 6, "fraction": 0.3333}, job
        cancelled = await client.delete(url)
        permits.release(100)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        app_runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
        scheduler = app_runtime.models["colour"].scheduler
        await until(lambda: scheduler.depth == 0 and scheduler.queued_seconds() == 0 and client._transport.app.state.in_flight.pixels.used == 0)  # type: ignore[attr-defined]
        assert app_runtime.metrics.dropped_tiles.labels("colour")._value.get() >= 3  # never inferred, or not kept
        assert len(engines.made["colour"].batches) - before <= 3  # two tiles, and the one held when it was cancelled
        assert (await client.get(f"{url}/result")).status_code == 409
        assert (await client.get(url)).json()["status"] == "cancelled"
        assert (await client.delete(url)).status_code == 204  # a finished job is deleted
        assert (await client.get(url)).status_code == 404


async def test_finished_jobs_expire_and_their_files_are_deleted(tmp_path: Path) -> None:
    # A TTL of seconds, not a fraction of one: on a busy machine the first poll after the job ends
    # may come late, and must still see it succeeded.
    async with serve(settings_for(tmp_path, jobs_ttl_s=3.0), Engines()) as client:
        url = (await client.post("/v1/jobs/denoise", content=PNG)).headers["location"]
        assert (await finished(client, url))["status"] == "succeeded"
        assert len(list((tmp_path / "jobs").iterdir())) == 1
        for _ in range(300):  # the sweeper runs every TTL / 10
            if (await client.get(url)).status_code == 410:
                break
            await asyncio.sleep(0.05)
        for response in (await client.get(url), await client.get(f"{url}/result")):
            assert response.status_code == 410 and response.headers["content-type"] == PROBLEM
        assert list((tmp_path / "jobs").iterdir()) == []
        assert 'restore_jobs_expired_total{reason="age"} 1.0' in (await client.get("/metrics")).text


async def test_count_bound_refuses_when_every_job_is_unfinished_and_drops_the_oldest_finished(tmp_path: Path) -> None:
    engines = Engines()
    async with serve(settings_for(tmp_path, jobs_max_count=2), engines) as client:
        permits = engines.hold()
        first, second = [(await client.post("/v1/jobs/denoise", content=PNG)).headers["location"] for _ in range(2)]
        full = await client.post("/v1/jobs/denoise", content=PNG)
        assert full.status_code == 503 and "retry-after" in full.headers and full.headers["content-type"] == PROBLEM
        permits.release(100)
        await finished(client, first)
        await finished(client, second)
        third = await client.post("/v1/jobs/denoise", content=PNG)
        assert third.status_code == 202
        assert (await client.get(first)).status_code == 410  # the oldest finished made room
        assert (await client.get(second)).status_code == 200


async def test_byte_bound_drops_old_results_and_fails_a_result_larger_than_the_store(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, jobs_max_bytes=40_000), Engines()) as client:
        first = (await client.post("/v1/jobs/denoise", content=PNG)).headers["location"]
        size = (await finished(client, first))["result"]["bytes"]
        assert 20_000 < size <= 40_000  # so two never fit together
        second = (await client.post("/v1/jobs/denoise", content=PNG)).headers["location"]
        assert (await finished(client, second))["status"] == "succeeded"
        assert (await client.get(f"{first}/result")).status_code == 410
        metrics = (await client.get("/metrics")).text
        assert f"restore_job_result_bytes {float(size)}" in metrics
        big = encode_pil(noisy_image(200, 200, 3), "PNG")
        failed = await finished(client, (await client.post("/v1/jobs/denoise", content=big)).headers["location"])
        assert failed["status"] == "failed" and failed["error"]["status"] == 507 and failed["result"] is None
        assert (await client.get(f"{failed['url']}/result")).status_code == 409


async def test_a_job_is_visible_only_with_the_key_that_created_it(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, api_keys=("k1", "k2")), Engines()) as client:
        k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
        assert (await client.post("/v1/jobs/denoise", content=PNG)).status_code == 401
        url = (await client.post("/v1/jobs/denoise", content=PNG, headers=k1)).headers["location"]
        assert (await client.get(url)).status_code == 401
        for call in (client.get(url, headers=k2), client.get(f"{url}/result", headers=k2), client.delete(url, headers=k2)):
            response = await call
            assert response.status_code == 404 and response.json()["type"] == "/problems/not-found"
        for _ in range(1000):
            job = (await client.get(url, headers=k1)).json()
            if job["status"] == "succeeded":
                break
            await asyncio.sleep(0.02)
        assert (await client.get(f"{url}/result", headers=k1)).status_code == 200


KEYS = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}


async def test_one_key_cannot_evict_another_keys_results_or_fill_the_store(tmp_path: Path) -> None:
    """Issue 31: the job bounds were global, so key A's jobs turned key B's finished result into 410
    (saying it had "finished more than N s ago") and A could fill the count so B got 503."""
    engines = Engines()
    settings = settings_for(tmp_path, api_keys=("a", "b"), jobs_max_count=6, jobs_max_count_per_client=3)
    async with serve(settings, engines) as client:
        a, b = KEYS
        mine = (await client.post("/v1/jobs/denoise", content=PNG, headers=b)).headers["location"]
        assert (await finished(client, mine, headers=b))["status"] == "succeeded"
        done = []
        for _ in range(5):  # A keeps 3; its own oldest finished ones make room, never B's
            url = (await client.post("/v1/jobs/denoise", content=PNG, headers=a)).headers["location"]
            assert (await finished(client, url, headers=a))["status"] == "succeeded"
            done.append(url)
        assert (await client.get(f"{mine}/result", headers=b)).status_code == 200
        gone = await client.get(done[0], headers=a)
        assert gone.status_code == 410 and "RESTORE_JOBS_MAX_COUNT_PER_CLIENT" in gone.json()["detail"], gone.text
        permits = engines.hold()
        held = [await client.post("/v1/jobs/denoise", content=PNG, headers=a) for _ in range(4)]
        assert [r.status_code for r in held] == [202, 202, 202, 503]  # A's unfinished jobs fill A's places only
        assert "one client" in held[3].json()["detail"]
        other = await client.post("/v1/jobs/denoise", content=PNG, headers=b)
        assert other.status_code == 202, other.text  # B still has room
        permits.release(1000)
        assert (await finished(client, other.headers["location"], headers=b))["status"] == "succeeded"


async def test_the_global_job_bound_drops_from_the_client_holding_the_most(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, api_keys=("a", "b"), jobs_max_count=4, jobs_max_count_per_client=4)
    async with serve(settings, Engines()) as client:
        a, b = KEYS
        mine = (await client.post("/v1/jobs/denoise", content=PNG, headers=b)).headers["location"]
        assert (await finished(client, mine, headers=b))["status"] == "succeeded"
        urls = []
        for _ in range(5):
            urls.append((await client.post("/v1/jobs/denoise", content=PNG, headers=a)).headers["location"])
            assert (await finished(client, urls[-1], headers=a))["status"] == "succeeded"
        gone = await client.get(urls[0], headers=a)
        assert gone.status_code == 410 and "RESTORE_JOBS_MAX_COUNT)" in gone.json()["detail"], gone.text
        assert (await client.get(f"{mine}/result", headers=b)).status_code == 200  # B's one result outlives A's oldest


async def test_a_job_with_a_short_jpeg_is_refused_before_the_202_and_holds_nothing(tmp_path: Path) -> None:
    """The 631-byte reproducer: a JPEG declaring 10000x10000 whose data ends after 16x16 pixels held
    all of the pixel budget (every tenant got 503) until its owner cancelled it."""
    async with serve(settings_for(tmp_path), Engines()) as client:
        refused = await client.post("/v1/jobs/denoise", content=short_jpeg(10000, 10000))
        assert refused.status_code == 422 and refused.json()["type"] == "/problems/corrupt-image", refused.text
        assert client._transport.app.state.in_flight.empty  # type: ignore[attr-defined]
        assert (await client.post("/v1/jobs/denoise", content=PNG)).status_code == 202


async def test_one_clients_jobs_hold_at_most_its_share_of_the_pixel_budget(tmp_path: Path) -> None:
    """An all-zero PNG declaring 100 MP is 291 KB and legal: the policy is that one client (key, or
    address) holds at most RESTORE_CLIENT_BUDGET_SHARE of the pixels in flight, jobs included."""
    engines = Engines()
    pixels = 100 * 130
    settings = settings_for(tmp_path, api_keys=("a", "b"), max_pixels_in_flight=4 * pixels, client_budget_share=0.5)
    async with serve(settings, engines) as client:
        a, b = KEYS
        engines.hold()
        taken = [await client.post("/v1/jobs/denoise", content=PNG, headers=a) for _ in range(3)]
        assert [r.status_code for r in taken] == [202, 202, 503]  # A holds 2 of the 4 images' worth
        assert "one client may hold" in taken[2].json()["detail"]
        assert (await client.post("/v1/jobs/denoise", content=PNG, headers=b)).status_code == 202
        big = encode_pil(noisy_image(160, 170, 3), "PNG")  # more than a client's share on its own
        too_big = await client.post("/v1/jobs/denoise", content=big, headers=b)
        assert too_big.status_code == 413 and "RESTORE_CLIENT_BUDGET_SHARE" in too_big.json()["detail"]


async def test_result_files_of_an_earlier_run_are_deleted_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "job-AAAAAAAAAAAAAAAAAAAAAA").write_bytes(b"old result")
    (folder / "job-BBBBBBBBBBBBBBBBBBBBBB.part").write_bytes(b"half written")
    (folder / "notes.txt").write_text("not ours")
    async with serve(settings_for(tmp_path), Engines()) as client:
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
        assert (await client.get("/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA")).status_code == 404


async def test_without_a_jobs_dir_results_live_in_a_temporary_folder_removed_at_exit(tmp_path: Path) -> None:
    settings = Settings(models_dir=write_fake_suite(tmp_path / "models"), tile_size=64, tile_overlap=2)
    async with serve(settings, Engines()) as client:
        url = (await client.post("/v1/jobs/derain", content=PNG)).headers["location"]
        await finished(client, url)
        folder = client._transport.app.state.jobs.folder  # type: ignore[attr-defined]
        assert folder.is_dir() and len(list(folder.iterdir())) == 1
    assert not folder.exists()


async def test_openapi_documents_the_job_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    submit = schema["paths"]["/v1/jobs/edges"]["post"]
    assert {p["name"] for p in submit["parameters"]} == {"thin", "threshold", "side", "depth", "scales", "format"}
    assert {"202", "413", "415", "422", "503"} <= set(submit["responses"])
    assert "Location" in submit["responses"]["202"]["headers"]
    assert set(schema["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
    assert {"404", "409", "410"} <= set(schema["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"])
