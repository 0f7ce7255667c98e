"""Memory by design: ORT's CPU arena shrunk after every batch unless asked, and large requests hand freed memory back."""

from __future__ import annotations

import asyncio
import platform
import threading
import time
from pathlib import Path

import pytest

from restore.service.inference.engine import OrtEngine
from restore.service.limits import memory
from restore.service.limits.budget import Budget
from restore.service.metrics import Metrics
from restore.service.settings import Settings
from tests.conftest import MODELS_DIR, BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest


@pytest.mark.parametrize("keep", [False, True])
def test_the_onnx_runtime_cpu_arena_is_shrunk_after_every_batch_unless_kept(keep: bool) -> None:
    """Kept, each model holds its largest batch's activations for good (0.3 GB per model for one
    512 px DnCNN tile, measured); shrunk after every batch, they go back, and within a batch the
    arena still reuses them (without any arena a 1024 px weather tile ran 2x slower)."""
    settings = Settings(intra_op_threads=1, cpu_mem_arena=keep)
    engine = OrtEngine(MODELS_DIR / "dncnn-gray-s25.onnx", settings, ["CPUExecutionProvider"])
    assert engine._session.get_session_options().enable_cpu_mem_arena is True
    shrink = engine._run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") if not keep else None
    assert shrink == (None if keep else "cpu:0")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_reaches_glibc() -> None:
    assert memory.trim() is True


@pytest.mark.anyio
async def test_a_large_request_trims_once_it_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = threading.Event()
    monkeypatch.setattr(memory, "TRIM_PIXELS", 64 * 64)
    monkeypatch.setattr(memory, "TRIM_DELAY_S", 0.0)
    monkeypatch.setattr(memory, "_quiet_until", 0.0)
    monkeypatch.setattr(memory, "trim", trimmed.set)
    root = write_fake_manifest(tmp_path, [{"name": "fake"}])
    async with serve(Settings(models_dir=root), lambda spec: BoxEngine()) as client:
        large = await client.post("/denoise", content=encode_pil(noisy_image(64, 64, 1), "PNG"))
        for _ in range(1000):  # a loaded machine may take a while to start the thread
            if trimmed.is_set():
                break
            await asyncio.sleep(0.01)
        assert large.status_code == 200 and trimmed.is_set()


def test_a_small_hold_trims_only_when_it_leaves_the_budget_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small requests while others run leave their memory for the next one (no trim); the last one
    out trims, since freed memory kept by an idle server is what pushed RSS 1 GiB above idle."""
    calls: list[int] = []
    monkeypatch.setattr(memory, "trim_soon", lambda: calls.append(1))
    budget = Budget("pixels", 10_000, "decoded pixels", Metrics(), retry_after_s=1, trim_at=5_000)
    running, small = budget.hold(100), budget.hold(100)
    small.release()
    assert calls == []
    running.release()
    assert calls == [1]
    budget.hold(0).release()  # a hold that never took anything (refused early) frees nothing
    assert calls == [1]
    other, large = budget.hold(100), budget.hold(6_000)
    large.release()
    assert calls == [1, 1]
    other.release()


def test_trims_scheduled_at_once_are_merged_into_one(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: ran.append(1))
    monkeypatch.setattr(memory, "TRIM_DELAY_S", 0.3)
    monkeypatch.setattr(memory, "_quiet_until", 0.0)
    assert memory.trim_soon() is True
    assert memory.trim_soon() is False  # one is on its way
    time.sleep(0.35)
    assert memory.trim_soon() is True  # a later burst gets its own
    for _ in range(500):
        if len(ran) == 2:
            break
        time.sleep(0.01)
    assert ran == [1, 1]


@pytest.mark.anyio
async def test_a_trim_whose_loop_closed_does_not_block_later_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "trim", lambda: None)
    monkeypatch.setattr(memory, "TRIM_DELAY_S", 0.05)
    monkeypatch.setattr(memory, "_quiet_until", 0.0)
    assert memory.trim_soon() is True  # scheduled on this loop; the test may end before it runs
    await asyncio.sleep(0.06)
    assert memory.trim_soon() is True
