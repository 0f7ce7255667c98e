"""End-to-end service measurements against a real server process on loopback.

    python -m bench.service_bench overhead     # 1 MP PNG end to end vs raw ORT on the same pixels
    python -m bench.service_bench concurrency  # throughput at 1/4/16 concurrent clients
    python -m bench.service_bench memory       # peak RSS of the server for a 50 MP request
    python -m bench.service_bench edges        # /edges end to end, megapixels per second (one scale and 0.5,1,1.5)
    python -m bench.service_bench weather      # /derain end to end (0.25, 1, 3 MP) vs raw ORT on the whole image

Each starts ``python -m restore.service`` on a free port with the models it needs, waits for /readyz,
runs, prints a markdown block, and stops the server. Requests are bounded in count and time.
Fairness, admission and memory under load are in ``bench.load_bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from export.session import cpu_session
from export.weather import condition_feed
from restore.service.inference.engine import available_cpus

REPO = Path(__file__).resolve().parents[1]
COLOR = "dncnn-color-blind"
GRAY = "dncnn-gray-s25"


def scene(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.3 * np.sin(x / 23.0) * np.cos(y / 17.0)
    planes = [np.clip(base + 0.05 * c + rng.normal(0, 0.1, base.shape).astype(np.float32), 0, 1) for c in range(channels)]
    return (np.stack(planes, axis=2) * 255 + 0.5).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(models: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    environment = {**os.environ, "RESTORE_MODELS": models, "RESTORE_LOG_LEVEL": "warning", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "restore.service", "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=environment
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("server never became ready")
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def post(
    url: str, body: bytes, timeout: float = 1800, query: str = "", endpoint: str = "/denoise"
) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = httpx.post(f"{url}{endpoint}{query}", content=body, headers={"Content-Type": "application/octet-stream"}, timeout=timeout)
    response.raise_for_status()
    return time.perf_counter() - start, response


def ort_seconds(model: str, array: np.ndarray, repeats: int, label: str | None = None) -> float:
    """Median seconds of one whole-image run of ``model``'s file (a conditioned weather file is
    told ``label``, as its route would tell it)."""
    session = cpu_session(REPO / "models" / "onnx" / f"{model}.onnx", available_cpus())
    x = np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32) / 255
    feed = {"input": x, **condition_feed(session, label)}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead(repeats: int) -> None:
    for height, width in ((1024, 1024), (1536, 2048)):
        image = scene(height, width, 3)
        body = png(image)
        with server(COLOR) as (url, _):
            post(url, body)
            runs = [post(url, body) for _ in range(repeats)]
        e2e = statistics.median(t for t, _ in runs)
        timing = runs[-1][1].headers["server-timing"]
        raw = ort_seconds(COLOR, image, repeats)
        print(f"| {width}x{height} RGB PNG | {e2e:.2f} s | {raw:.2f} s | {100 * (e2e / raw - 1):+.1f}% | `{timing}` |", flush=True)


def concurrency(requests_per_client: int) -> None:
    image = scene(256, 256, 3)
    body = png(image)

    async def client(http: httpx.AsyncClient, url: str, latencies: list[float]) -> None:
        for _ in range(requests_per_client):
            start = time.perf_counter()
            response = await http.post(f"{url}/denoise", content=body, headers={"Content-Type": "image/png"})
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async def level(url: str, clients: int) -> tuple[float, list[float]]:
        latencies: list[float] = []
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
            start = time.perf_counter()
            await asyncio.gather(*(client(http, url, latencies) for _ in range(clients)))
            return time.perf_counter() - start, latencies

    with server(COLOR) as (url, _):
        post(url, body)
        for clients in (1, 4, 16):
            wall, latencies = asyncio.run(level(url, clients))
            count = len(latencies)
            mp = count * image.shape[0] * image.shape[1] / 1e6
            print(
                f"| {clients} | {count} | {count / wall:.2f} | {mp / wall:.3f} | {statistics.median(latencies):.2f} s "
                f"| {max(latencies):.2f} s |",
                flush=True,
            )


def memory(megapixels: float, channels: int) -> None:
    side = int((megapixels * 1e6) ** 0.5)
    image = scene(side, side, channels, seed=3)
    # A noisy 50 MP RGB PNG would exceed the 64 MiB body limit; a camera would send JPEG anyway.
    body = png(image) if channels == 1 else jpeg(image)
    del image
    with server(GRAY if channels == 1 else COLOR) as (url, process):
        seconds, response = post(url, body, query="?sigma=25" if channels == 1 else "")
        status = Path(f"/proc/{process.pid}/status").read_text()
    peak = next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
    kind = "gray PNG" if channels == 1 else "RGB JPEG"
    print(f"| {side}x{side} {kind} ({side * side / 1e6:.1f} MP, {len(body) / 2**20:.1f} MiB) | {int(peak) / 2**20:.2f} GiB | "
          f"{seconds:.0f} s | `{response.headers['server-timing']}` |")


def edges(repeats: int) -> None:
    for height, width in ((512, 512), (1024, 1024)):
        body = png(scene(height, width, 3, seed=4))
        with server("hed-bsds500") as (url, _):
            post(url, body, endpoint="/edges")
            for query in ("", "?thin=true", "?scales=0.5,1,1.5"):  # single scale; multi-scale, 3.5x the pixels
                runs = [post(url, body, endpoint="/edges", query=query) for _ in range(repeats)]
                seconds = statistics.median(t for t, _ in runs)
                print(f"| {width}x{height} RGB PNG {query or '(fused map)'} | {seconds:.2f} s | "
                      f"{height * width / 1e6 / seconds:.3f} MP/s | `{runs[-1][1].headers['server-timing']}` |", flush=True)


def weather(repeats: int) -> None:
    """/derain end to end (the weather-unified student through the production tiling): the issue's
    target is a 1 MP photo in <= 2 s (0.5 MP/s) on 2 CPU cores."""
    for height, width in ((512, 512), (1024, 1024), (1536, 2048)):
        image = scene(height, width, 3, seed=7)
        body = png(image)
        with server("weather-unified") as (url, _):
            post(url, body, endpoint="/derain")
            runs = [post(url, body, endpoint="/derain") for _ in range(repeats)]
        seconds = statistics.median(t for t, _ in runs)
        raw = ort_seconds("weather-unified", image, repeats, "rain")
        print(f"| {width}x{height} RGB PNG | {seconds:.2f} s | {height * width / 1e6 / seconds:.3f} MP/s | "
              f"{raw:.2f} s | `{runs[-1][1].headers['server-timing']}` |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "concurrency", "memory", "edges", "weather"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--megapixels", type=float, default=50.0)
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3)
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.repeats)
    elif args.what == "concurrency":
        concurrency(args.repeats)
    elif args.what == "edges":
        edges(args.repeats)
    elif args.what == "weather":
        weather(args.repeats)
    else:
        memory(args.megapixels, args.channels)


if __name__ == "__main__":
    main()
