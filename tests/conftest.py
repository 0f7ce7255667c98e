"""Shared test helpers: generated images, a fake engine with a known receptive field, app clients."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from restore.core.manifest import ModelSpec
from restore.service import server
from restore.service.app import create_app
from restore.service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS_DIR = REPO / "models" / "onnx"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


class BoxEngine:
    """A zero-padded mean filter of radius ``radius``: a stand-in CNN whose receptive field we know.

    Optional ``gate`` blocks every batch until set, and ``delay`` slows batches, for queue tests;
    ``outputs`` repeats the first output channel that many times (HED has six outputs).
    """

    provider = "FakeExecutionProvider"

    def __init__(
        self, radius: int = 2, delay: float = 0.0, gate: threading.Event | None = None, outputs: int | None = None
    ) -> None:
        self.radius = radius
        self.delay = delay
        self.gate = gate
        self.outputs = outputs
        self.batches: list[tuple[int, ...]] = []
        self.calls: list[list[float]] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.delay:
            threading.Event().wait(self.delay)
        self.batches.append(batch.shape)
        self.calls.append([float(t.mean()) for t in batch])
        out = box_filter(batch, self.radius)
        return out if self.outputs is None else np.repeat(out[:, :1], self.outputs, axis=1)


def box_filter(batch: np.ndarray, radius: int) -> np.ndarray:
    size = 2 * radius + 1
    padded = np.pad(batch.astype(np.float64), ((0, 0), (0, 0), (radius, radius), (radius, radius)))
    csum = padded.cumsum(axis=2).cumsum(axis=3)
    csum = np.pad(csum, ((0, 0), (0, 0), (1, 0), (1, 0)))
    h, w = batch.shape[2:]
    total = csum[:, :, size:size + h, size:size + w] - csum[:, :, :h, size:size + w] - csum[:, :, size:size + h, :w] + csum[:, :, :h, :w]
    return (total / size**2).astype(np.float32)


def write_fake_manifest(root: Path, entries: list[dict[str, Any]]) -> Path:
    """A manifest whose files exist and whose checksums match (their content is irrelevant to fakes)."""
    root.mkdir(parents=True, exist_ok=True)
    models = []
    for entry in entries:
        path = root / f"{entry['name']}.onnx"
        path.write_bytes(f"fake model {entry['name']}".encode())
        models.append(
            {
                "task": "denoise", "version": "0.0.1", "sigma": None, "overlap": 2, "multiple": 1, "default": True,
                "channels": 1, "provenance": {"source": "test"}, "metrics": {},
                **entry, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        )
    (root / "manifest.json").write_text(json.dumps({"models": models}))
    return root


def write_fake_suite(root: Path) -> Path:
    """Fake models behind every endpoint: gray (blind and sigma 25) and colour denoisers, edges, weather."""
    return write_fake_manifest(root, [
        {"name": "gray"}, {"name": "gray-s25", "sigma": 25}, {"name": "colour", "channels": 3},
        {"name": "edges", "task": "edges", "channels": 3}, {"name": "weather", "task": "weather", "channels": 3},
    ])


def fake_engine(spec: ModelSpec) -> BoxEngine:
    """The engine for ``write_fake_suite``'s models: six outputs for edges, as HED has."""
    return BoxEngine(radius=1, outputs=6 if spec.task == "edges" else None)


@dataclass
class Running:
    base: str  # http://127.0.0.1:port
    address: tuple[str, int]
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def running_server(settings: Settings, engine_factory: Callable[[ModelSpec], Any] = fake_engine) -> Iterator[Running]:
    """The app behind the real HTTP edge (restore.service.server: uvicorn, EdgeProtocol) on a free local port,
    in a thread, once /readyz answers 200; stopped (as SIGTERM would) on exit."""
    app = create_app(settings, engine_factory=engine_factory)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    base = f"http://127.0.0.1:{address[1]}"
    instance = uvicorn.Server(server.config(app, settings, host="127.0.0.1", port=0))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            try:
                if instance.started and httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError("the server never became ready")
        yield Running(base, address, instance, thread)
    finally:
        instance.should_exit = True
        thread.join(timeout=60)
        sock.close()


@asynccontextmanager
async def serve(
    settings: Settings, engine_factory: Callable[[ModelSpec], Any] | None = None, *, wait_ready: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an in-process client; optionally wait for /readyz."""
    app = create_app(settings, engine_factory=engine_factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            if wait_ready:  # loading, the speed probe and warm-up: seconds idle, a minute on a busy CPU
                for _ in range(2400):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"never ready: {(await client.get('/readyz')).text}")
            yield client


def asgi_scope(path: str, headers: list[tuple[bytes, bytes]], method: str = "POST") -> dict[str, Any]:
    """An HTTP scope for tests that drive the ASGI app directly (a client that leaves mid-request)."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }


def noisy_image(
    height: int, width: int, channels: int = 3, seed: int = 0, dtype: type = np.uint8, noise: float = 0.08
) -> np.ndarray:
    """A smooth scene plus noise: what a denoiser is for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = 0.5 + 0.3 * np.sin(x / 9.0) * np.cos(y / 13.0)
    planes = [np.clip(base + 0.1 * c + rng.normal(0, noise, base.shape), 0, 1) for c in range(channels)]
    maxv = np.iinfo(dtype).max
    return (np.stack(planes, axis=2) * maxv + 0.5).astype(dtype)


def encode_pil(array: np.ndarray, fmt: str, **options: Any) -> bytes:
    image = Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
