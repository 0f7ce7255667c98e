"""Model loading: retried with backoff, readiness by the required models, tiles sized by measured speed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from restore.core.manifest import ManifestError, ModelSpec
from restore.core.tiling import MIN_TILE_OVERLAPS
from restore.service.app import create_app
from restore.service.settings import Settings
from tests.conftest import BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest

pytestmark = pytest.mark.anyio


async def until_ready(client: httpx.AsyncClient, status: int = 200, says: str = "") -> httpx.Response:
    for _ in range(500):
        ready = await client.get("/readyz")
        if ready.status_code == status and says in ready.text:
            return ready
        await asyncio.sleep(0.02)
    raise AssertionError(f"/readyz never answered {status} with {says!r}: {ready.text}")


async def test_a_model_that_fails_to_load_is_retried_until_it_loads(tmp_path: Path) -> None:
    root = write_fake_manifest(tmp_path, [{"name": "flaky"}])
    failures = iter([RuntimeError("CUDA out of memory"), RuntimeError("CUDA out of memory")])

    def factory(spec: ModelSpec) -> BoxEngine:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return BoxEngine()

    async with serve(Settings(models_dir=root, load_retry_s=0.01), factory, wait_ready=False) as client:
        await until_ready(client)
        listing = (await client.get("/v1/models")).json()["models"][0]
        assert listing["status"] == "ready" and listing["load_attempts"] == 3
        assert 'restore_model_load_attempts_total{model="flaky"} 3.0' in (await client.get("/metrics")).text
        assert (await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"))).status_code == 200


async def test_while_failing_readyz_says_why_and_when_the_next_attempt_comes(tmp_path: Path) -> None:
    root = write_fake_manifest(tmp_path, [{"name": "broken"}])

    def factory(spec: ModelSpec) -> BoxEngine:
        raise RuntimeError("no such device")

    async with serve(Settings(models_dir=root, load_retry_s=60), factory, wait_ready=False) as client:
        ready = await until_ready(client, 503, says="next in")
        assert "no such device" in ready.json()["not_ready"]["broken"]
        assert "attempt 1; next in 60 s" in ready.json()["not_ready"]["broken"]


@pytest.mark.parametrize("required,status", [((), 503), (("good",), 200)])
async def test_readiness_needs_the_required_models_only(tmp_path: Path, required: tuple[str, ...], status: int) -> None:
    """Default: every loaded model must be ready. With RESTORE_REQUIRED_MODELS the replica serves
    (and says which optional models are still being retried) while the others are broken."""
    root = write_fake_manifest(tmp_path, [{"name": "good"}, {"name": "bad", "sigma": 25}])

    def factory(spec: ModelSpec) -> BoxEngine:
        if spec.name == "bad":
            raise RuntimeError("corrupt weights")
        return BoxEngine()

    settings = Settings(models_dir=root, required_models=required, load_retry_s=60)
    async with serve(settings, factory, wait_ready=False) as client:
        body = (await until_ready(client, status, says="corrupt weights")).json()
        assert "corrupt weights" in body["not_ready"]["bad"]
        if status == 200:
            assert body["models"] == ["good"]
        assert (await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"))).status_code == 200
        refused = await client.post("/denoise?sigma=25", content=encode_pil(noisy_image(8, 8, 1), "PNG"))
        assert refused.status_code == 503


def test_a_required_model_that_is_not_loaded_stops_the_start(tmp_path: Path) -> None:
    root = write_fake_manifest(tmp_path, [{"name": "good"}])
    with pytest.raises(ManifestError, match="nope"):
        create_app(Settings(models_dir=root, required_models=("nope",)), engine_factory=lambda spec: BoxEngine())


@pytest.mark.parametrize("batch_seconds", [0.0, 0.5])
async def test_tiles_are_sized_by_the_time_budget_at_load(tmp_path: Path, batch_seconds: float) -> None:
    """A model that needs at least 50 ms per batch runs at most 16384 px / 0.05 s; half a second of
    that is at most 405 px square, so its tiles shrink from 1024 to the 64 px grid below (or to the
    floor of four overlaps). With the budget off, RESTORE_TILE_SIZE is used."""
    root = write_fake_manifest(tmp_path, [{"name": "slow", "overlap": 20}])
    settings = Settings(models_dir=root, batch_seconds=batch_seconds, tile_overlap=16)
    async with serve(settings, lambda spec: BoxEngine(delay=0.05)) as client:
        tile = (await client.get("/v1/models")).json()["models"][0]["tile"]
    if batch_seconds == 0:
        assert tile["size"] == 1024
    else:
        assert round_up_64(MIN_TILE_OVERLAPS * tile["overlap"]) <= tile["size"] <= 384


async def test_a_model_s_own_tiling_needs_are_kept_under_the_time_budget(tmp_path: Path) -> None:
    """A manifest ``min_tile`` floors the time budget's tile and a ``feather`` widens the cross-fade
    (the weather model: small tiles and narrow cross-fades show seams in hazy skies); both show in
    /v1/models, and the other models keep the service's settings."""
    root = write_fake_manifest(tmp_path, [{"name": "wide", "overlap": 20, "feather": 40, "min_tile": 768},
                                          {"name": "plain", "overlap": 20, "sigma": 25}])
    settings = Settings(models_dir=root, batch_seconds=0.5, tile_overlap=16)
    async with serve(settings, lambda spec: BoxEngine(delay=0.05)) as client:
        tiles = {m["name"]: m["tile"] for m in (await client.get("/v1/models")).json()["models"]}
    assert tiles["wide"]["size"] == 768 and (tiles["wide"]["feather"], tiles["wide"]["overlap"]) == (40, 80)
    assert tiles["plain"]["size"] <= 384 and (tiles["plain"]["feather"], tiles["plain"]["overlap"]) == (16, 56)


async def test_a_tile_size_within_a_model_s_overlap_fails_that_model_with_the_reason(tmp_path: Path) -> None:
    """RESTORE_TILE_SIZE 64 leaves nothing of a tile of the "wide" model (overlap 2 x 20 + 40):
    /readyz says so instead of every request of it failing later; the other model serves."""
    root = write_fake_manifest(tmp_path, [{"name": "wide", "overlap": 20, "feather": 40},
                                          {"name": "plain", "sigma": 25}])
    settings = Settings(models_dir=root, tile_size=64, tile_overlap=2, load_retry_s=60, required_models=("plain",))
    async with serve(settings, lambda spec: BoxEngine(), wait_ready=False) as client:
        body = (await until_ready(client, 200, says="RESTORE_TILE_SIZE")).json()
        assert "must exceed this model's tile overlap 80" in body["not_ready"]["wide"]


def round_up_64(value: int) -> int:
    return -(-value // 64) * 64



async def test_ready_is_logged_once_when_the_last_required_model_is_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn says "running" before any model is loaded; the line to wait for is this one."""
    root = write_fake_manifest(tmp_path, [{"name": "first"}, {"name": "second"}, {"name": "optional"}])
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def factory(spec: ModelSpec) -> BoxEngine:
        if spec.name == "second":  # held until the test has seen that "first" alone logs no "ready"
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=30)
        if spec.name == "optional":
            raise RuntimeError("not required: its failure does not hold readiness back")
        return BoxEngine()

    settings = Settings(models_dir=root, required_models=("first", "second"), load_retry_s=60)
    with caplog.at_level(logging.INFO, logger="restore.service.inference.runtime"):
        async with serve(settings, factory, wait_ready=False) as client:
            await until_ready(client, 503, "second")
            assert not [r for r in caplog.records if r.getMessage().startswith("ready")]
            gate.set()
            await until_ready(client)
            await asyncio.sleep(0.1)
    ready = [r for r in caplog.records if r.getMessage() == "ready"]
    assert len(ready) == 1 and ready[0].models == ["first", "second"]  # type: ignore[attr-defined]
