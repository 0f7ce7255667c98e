"""Memory by design: no ORT arena on CPU unless asked, and large requests hand freed memory back."""

from __future__ import annotations

import asyncio
import platform
import threading
from pathlib import Path

import pytest

from service import memory
from service.engine import OrtEngine
from service.settings import Settings
from tests.conftest import MODELS_DIR, BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest


@pytest.mark.parametrize("arena", [False, True])
def test_the_onnx_runtime_cpu_arena_is_off_unless_asked_for(arena: bool) -> None:
    """With the arena, each model keeps its largest batch's activations for good (0.3 GB per model
    for one 512 px DnCNN tile, measured); without it they go back after every batch."""
    settings = Settings(intra_op_threads=1) if not arena else Settings(intra_op_threads=1, cpu_mem_arena=True)
    engine = OrtEngine(MODELS_DIR / "dncnn-gray-s25.onnx", settings, ["CPUExecutionProvider"])
    assert engine._session.get_session_options().enable_cpu_mem_arena is arena


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_reaches_glibc() -> None:
    assert memory.trim() is True


@pytest.mark.anyio
async def test_a_large_request_trims_once_it_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = threading.Event()
    monkeypatch.setattr(memory, "TRIM_PIXELS", 64 * 64)
    monkeypatch.setattr(memory, "TRIM_DELAY_S", 0.0)
    monkeypatch.setattr(memory, "trim", trimmed.set)
    root = write_fake_manifest(tmp_path, [{"name": "fake"}])
    async with serve(Settings(models_dir=root), lambda spec: BoxEngine()) as client:
        small = await client.post("/denoise", content=encode_pil(noisy_image(32, 32, 1), "PNG"))
        await asyncio.sleep(0.1)
        assert small.status_code == 200 and not trimmed.is_set()
        large = await client.post("/denoise", content=encode_pil(noisy_image(64, 64, 1), "PNG"))
        for _ in range(100):
            if trimmed.is_set():
                break
            await asyncio.sleep(0.01)
        assert large.status_code == 200 and trimmed.is_set()
