"""Issue 13 under load: fairness, admission and memory, against a real server process on loopback.

    python -m bench.load_bench clients      # 32 clients post 128x128 PNGs in a loop for 60 s
    python -m bench.load_bench small-big    # a 0.25 MP request sent while a 4 MP one runs
    python -m bench.load_bench uploads      # 8 concurrent 60 MB multipart bodies: RSS and /healthz
    python -m bench.load_bench burst        # 8 x 4 MP while one runs: refused before decoding, how fast
    python -m bench.load_bench memory       # RSS idle, after every model once, after a cancelled 100 MP

Each starts ``python -m restore.service`` (bench.service_bench.server) with default settings unless noted,
waits for /readyz, prints a markdown block with its targets, and stops the server. ``--clients``,
``--duration`` and friends shorten a run for a smoke test; the figures for the record come from
the defaults on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

from bench.service_bench import COLOR, png, post, scene, server
from restore.service.images import codecs

HEADERS = {"Content-Type": "image/png"}
GIB = 2**30


def rss(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` in GiB (VmRSS now, VmHWM the peak)."""
    line = next(s for s in Path(f"/proc/{pid}/status").read_text().splitlines() if s.startswith(field))
    return int(line.split()[1]) / 2**20


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def clients(count: int, duration: float, side: int) -> None:
    body = png(scene(side, side, 3, seed=5))

    async def client(http: httpx.AsyncClient, url: str, deadline: float, latencies: list[float]) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await http.post(f"{url}/denoise", content=body, headers=HEADERS)
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async def run(url: str) -> tuple[list[list[float]], float]:
        per_client: list[list[float]] = [[] for _ in range(count)]
        async with httpx.AsyncClient(timeout=duration + 600, limits=httpx.Limits(max_connections=count)) as http:
            start = time.perf_counter()
            await asyncio.gather(*(client(http, url, start + duration, per_client[i]) for i in range(count)))
            return per_client, time.perf_counter() - start

    with server(COLOR) as (url, _):
        httpx.post(f"{url}/denoise", content=body, headers=HEADERS, timeout=60).raise_for_status()
        per_client, wall = asyncio.run(run(url))
    latencies = [t for c in per_client for t in c]
    served = [len(c) for c in per_client]
    median, worst = statistics.median(latencies), max(latencies)
    print(f"| {count} clients x {duration:.0f} s, {side}x{side} RGB PNG | value | target |")
    print("|---|---|---|")
    print(f"| requests served (wall {wall:.0f} s) | {len(latencies)} ({len(latencies) / wall:.2f}/s) | |")
    print(f"| requests per client: min / median / max | {min(served)} / {statistics.median(served):.0f} / {max(served)} | every client served |")
    print(f"| latency median / p99 / max | {median:.2f} s / {percentile(latencies, 99):.2f} s / {worst:.2f} s | |")
    print(f"| max / median | {worst / median:.2f} | <= 3 ({'met' if worst <= 3 * median and min(served) > 0 else 'MISSED'}) |")


def small_big(repeats: int, big_side: int, small_side: int) -> None:
    big, small = png(scene(big_side, big_side, 3, seed=1)), png(scene(small_side, small_side, 3, seed=2))
    big_mp, small_mp = big_side**2 / 1e6, small_side**2 / 1e6

    async def scenario(url: str) -> tuple[float, float, float, httpx.Response]:
        async with httpx.AsyncClient(timeout=1800) as http:
            start = time.perf_counter()
            big_task = asyncio.create_task(http.post(f"{url}/denoise", content=big, headers=HEADERS))
            await asyncio.sleep(3.0)  # the big one is decoded and its tiles are running
            small_start = time.perf_counter()
            small_response = await http.post(f"{url}/denoise", content=small, headers=HEADERS)
            small_done = time.perf_counter()
            big_response = await big_task
            small_response.raise_for_status(), big_response.raise_for_status()
            return small_done - small_start, time.perf_counter() - start, small_done - start, small_response

    with server(COLOR) as (url, _):
        tile = httpx.get(f"{url}/v1/models").json()["models"][0]["tile"]["size"]
        post(url, small)
        solo = statistics.median(post(url, small)[0] for _ in range(repeats))
        during, big_seconds, small_at, response = asyncio.run(scenario(url))
    print(f"| {small_mp:.2f} MP while {big_mp:.1f} MP runs (tile {tile} px, chosen at load) | value | target |")
    print("|---|---|---|")
    print(f"| {small_mp:.2f} MP alone (median of {repeats}) | {solo:.2f} s | |")
    print(f"| {small_mp:.2f} MP while the {big_mp:.1f} MP one runs | {during:.2f} s | <= solo + 1 s = {solo + 1:.2f} s "
          f"({'met' if during <= solo + 1 else 'MISSED'}) |")
    print(f"| small finished / big finished (from the big one's start) | {small_at:.2f} s / {big_seconds:.2f} s | |")
    print(f"| small request's Server-Timing | `{response.headers['server-timing']}` | |")


def oversize_png(width: int, height: int, data: bytes) -> bytes:
    """A PNG whose header says ``width x height`` RGB and whose IDAT is ``data``: the server reads the
    whole body, then refuses it on the header (413), so what is measured is the upload path alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def uploads(count: int, megabytes: int) -> None:
    payload = oversize_png(20000, 20000, np.random.default_rng(0).bytes(megabytes * 10**6))

    async def run(url: str, pid: int) -> tuple[list[int], list[float], float]:
        stalls: list[float] = []
        done = threading.Event()
        peak = rss(pid)

        def health() -> None:  # a thread and a client of its own: the uploads keep this loop busy
            nonlocal peak
            with httpx.Client(timeout=600) as http:
                while not done.is_set():
                    start = time.perf_counter()
                    http.get(f"{url}/healthz").raise_for_status()
                    stalls.append(time.perf_counter() - start)
                    peak = max(peak, rss(pid))
                    time.sleep(0.05)

        watcher = threading.Thread(target=health)
        watcher.start()
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=count)) as http:
            files = {"image": ("big.png", payload, "image/png")}
            responses = await asyncio.gather(*(http.post(f"{url}/denoise", files=files) for _ in range(count)))
        done.set()
        watcher.join()
        return [r.status_code for r in responses], stalls, peak

    with server(COLOR) as (url, process):
        idle = rss(process.pid)
        statuses, stalls, peak = asyncio.run(run(url, process.pid))
        time.sleep(2)
        after = rss(process.pid)
    kinds = {status: statuses.count(status) for status in sorted(set(statuses))}
    print(f"| {count} concurrent {megabytes} MB multipart uploads | value |")
    print("|---|---|")
    print(f"| statuses (413: read, then refused on the header; 503: over the in-flight body budget) | {kinds} |")
    print(f"| RSS idle / peak (sampled) / 2 s after | {idle:.2f} / {peak:.2f} / {after:.2f} GiB |")
    print(f"| /healthz latency median / max while uploading | {1000 * statistics.median(stalls):.0f} ms / {1000 * max(stalls):.0f} ms |")


def burst(count: int, window_s: float) -> None:
    big = png(scene(2048, 2048, 3, seed=1))

    async def run(url: str) -> tuple[list[tuple[int, float, str]], int]:
        async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=count + 1)) as http:
            first = asyncio.create_task(http.post(f"{url}/denoise", content=big, headers=HEADERS))
            await asyncio.sleep(3.0)  # decoded, tiles running

            async def one() -> tuple[int, float, str]:
                start = time.perf_counter()
                response = await http.post(f"{url}/denoise", content=big, headers=HEADERS)
                return response.status_code, time.perf_counter() - start, response.headers.get("retry-after", "")

            tasks = [asyncio.create_task(one()) for _ in range(count)]
            done, pending = await asyncio.wait(tasks, timeout=window_s)
            for task in (*pending, first):
                task.cancel()
            await asyncio.gather(*tasks, first, return_exceptions=True)
            return [task.result() for task in done], len(pending)

    with server(COLOR) as (url, _):
        decode_ms = _decode_ms(big)
        answered, running = asyncio.run(run(url))
    refused = [r for r in answered if r[0] == 503]
    print(f"| {count} x 4 MP RGB PNG sent at once while one 4 MP request runs | value |")
    print("|---|---|")
    print(f"| refused with 503 within {window_s:g} s / other answers / still running (admitted; cancelled) "
          f"| {len(refused)} / {len(answered) - len(refused)} / {running} |")
    if refused:
        latencies = [1000 * r[1] for r in refused]
        print(f"| time to the 503, median / max | {statistics.median(latencies):.0f} ms / {max(latencies):.0f} ms |")
        print(f"| Retry-After sent | {sorted({r[2] for r in refused})} s |")
    print(f"| decoding that image alone (what admission before decoding saves per refusal) | {decode_ms:.0f} ms |")


def _decode_ms(body: bytes) -> float:
    start = time.perf_counter()
    codecs.decode(body, 10**9)
    return 1000 * (time.perf_counter() - start)


def wait_idle(url: str, timeout_s: float = 300.0) -> float:
    """Seconds until the server holds nothing in flight (both budgets and every queue at 0, read
    from /metrics): a fixed sleep after a cancellation measures a busy machine's backlog, not what
    the server keeps."""
    start = time.monotonic()
    names = ("restore_in_flight{", "restore_queue_depth_tiles{")
    while time.monotonic() - start < timeout_s:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(names)]
        if values and not any(values):
            return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError("the server never went idle")


def flat_png(width: int, height: int) -> bytes:
    """A ``width x height`` RGB PNG of one colour, written row by row (no full-size array in the client)."""
    deflate = zlib.compressobj(9)
    row = b"\x00" + bytes(3 * width)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def memory(side: int, run_s: float, serve_side: int, arena: bool) -> None:
    body = png(scene(serve_side, serve_side, 3, seed=6))
    gray = png(scene(serve_side, serve_side, 1, seed=6))
    bomb = flat_png(side, side)
    env = {"RESTORE_CPU_MEM_ARENA": "true" if arena else "false"}
    with server("", **env) as (url, process):
        time.sleep(2)
        idle = rss(process.pid)
        models = httpx.get(f"{url}/v1/models").json()["models"]
        for model in models:
            endpoint = {"denoise": "/denoise", "edges": "/edges", "weather": "/derain"}[model["task"]]
            query = f"?sigma={model['sigma']:g}" if model.get("sigma") else ""
            image = gray if model["channels"] == 1 else body
            response = httpx.post(f"{url}{endpoint}{query}", content=image, headers=HEADERS, timeout=600)
            assert response.headers.get("x-model") == model["name"], (model["name"], response.headers.get("x-model"))
        time.sleep(2)
        served = rss(process.pid)

        async def cancelled() -> None:
            async with httpx.AsyncClient(timeout=600) as http:
                task = asyncio.create_task(http.post(f"{url}/denoise", content=bomb, headers=HEADERS))
                await asyncio.sleep(run_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(cancelled())
        peak_during = rss(process.pid, "VmHWM")
        settle = wait_idle(url)
        time.sleep(3)  # memory.TRIM_DELAY_S, then the trim itself
        after = rss(process.pid)
    with server(COLOR, **env) as (url, process):
        time.sleep(2)
        one = rss(process.pid)
    per_model = (idle - one) / max(1, len(models) - 1)
    def verdict(value: float) -> str:
        return "met" if value - idle <= 0.5 else "MISSED"

    print(f"| memory, {len(models)} default models, ORT CPU arena {'on' if arena else 'off'} | RSS | target |")
    print("|---|---|---|")
    print(f"| idle, every model loaded | {idle:.2f} GiB | |")
    print(f"| idle, only {COLOR} loaded | {one:.2f} GiB | |")
    print(f"| steady state per loaded model ((all - one) / {len(models) - 1}) | {1024 * per_model:.0f} MiB | |")
    print(f"| after one {serve_side}x{serve_side} request to every model | {served:.2f} GiB ({served - idle:+.2f}) | "
          f"within 0.5 GiB of idle ({verdict(served)}) |")
    print(f"| {side}x{side} flat PNG ({len(bomb) / 1024:.0f} KiB) cancelled after {run_s:g} s: peak / 3 s after the "
          f"server went idle ({settle:.1f} s after the cancel) | {peak_during:.2f} / {after:.2f} GiB ({after - idle:+.2f}) | "
          f"within 0.5 GiB of idle ({verdict(after)}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["clients", "small-big", "uploads", "burst", "memory"])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (clients)")
    parser.add_argument("--side", type=int, default=0, help="image side: 128 (clients), 10000 (memory)")
    parser.add_argument("--repeats", type=int, default=3, help="solo runs (small-big)")
    parser.add_argument("--big-side", type=int, default=2048, help="the big image's side (small-big)")
    parser.add_argument("--small-side", type=int, default=512, help="the small image's side (small-big)")
    parser.add_argument("--count", type=int, default=8, help="uploads or requests (uploads, burst)")
    parser.add_argument("--megabytes", type=int, default=60, help="body size (uploads)")
    parser.add_argument("--run-s", type=float, default=10.0, help="seconds before the big request is cancelled (memory)")
    parser.add_argument("--serve-side", type=int, default=512, help="side of the image each model serves once (memory)")
    parser.add_argument("--arena", action="store_true", help="RESTORE_CPU_MEM_ARENA=true, for contrast (memory)")
    parser.add_argument("--window-s", type=float, default=10.0, help="how long refusals are waited for (burst)")
    args = parser.parse_args()
    if args.what == "clients":
        clients(args.clients, args.duration, args.side or 128)
    elif args.what == "small-big":
        small_big(args.repeats, args.big_side, args.small_side)
    elif args.what == "uploads":
        uploads(args.count, args.megabytes)
    elif args.what == "burst":
        burst(args.count, args.window_s)
    else:
        memory(args.side or 10000, args.run_s, args.serve_side, args.arena)


if __name__ == "__main__":
    main()
