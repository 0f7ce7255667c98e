"""What Ray Serve's proxy costs: the same requests against ``make run`` and against Serve (1 and 2
replicas) on this machine, all on loopback.

    python -m bench.serve_overhead                                   # the figures for docs/benchmarks.md
    python -m bench.serve_overhead --duration 3 --side 64 --clients 2 --replicas 1 --body-mib 4   # smoke

For each server: ``--clients`` clients post a ``--side``-pixel RGB PNG to /denoise in a loop for
``--duration`` s (throughput and latency: the proxy's share of a real request), 50 sequential
GET /healthz (the fixed cost of one hop through the proxy, no model), and one multipart upload of
``--body-mib`` MiB around a small image (the cost of a large body through the proxy). The servers get
the same CPUs: ``make run`` one process with ``--cpus`` ONNX Runtime threads; Serve's replicas split
``--cpus`` between them (``RESTORE_SERVE_NUM_CPUS``, threads following). Ray runs a head on loopback
started here, without dashboard or usage reporting, and is shut down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np

from bench.service_bench import COLOR, free_port, png, scene, server
import ray
from ray import serve

from restore.service import ray_serve  # the whole script measures Ray Serve: it needs the ray extra

HEADERS = {"Content-Type": "image/png"}


def measure(url: str, clients: int, duration: float, side: int, body_mib: int) -> dict[str, float]:
    body = png(scene(side, side, 3, seed=3))

    async def client(http: httpx.AsyncClient, deadline: float, latencies: list[float]) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await http.post(f"{url}/denoise", content=body, headers=HEADERS)
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async def load() -> tuple[list[float], float]:
        latencies: list[float] = []
        async with httpx.AsyncClient(timeout=duration + 600, limits=httpx.Limits(max_connections=clients)) as http:
            await http.post(f"{url}/denoise", content=body, headers=HEADERS)  # warm: first tile shape of each replica
            start = time.perf_counter()
            await asyncio.gather(*(client(http, start + duration, latencies) for _ in range(clients)))
            return latencies, time.perf_counter() - start

    latencies, elapsed = asyncio.run(load())
    with httpx.Client(timeout=60) as http:
        hops = []
        for _ in range(50):
            start = time.perf_counter()
            http.get(f"{url}/healthz").raise_for_status()
            hops.append(time.perf_counter() - start)
        padding = np.random.default_rng(0).integers(0, 256, body_mib * 2**20, dtype=np.uint8).tobytes()
        files = {"padding": ("p.bin", padding, "application/octet-stream"), "image": ("a.png", png(scene(64, 64, 3)), "image/png")}
        start = time.perf_counter()
        http.post(f"{url}/denoise", files=files, timeout=600).raise_for_status()
        upload = time.perf_counter() - start
    return {
        "rps": len(latencies) / elapsed, "p50": statistics.median(latencies), "p95": float(np.percentile(latencies, 95)),
        "hop_ms": statistics.median(hops) * 1000, "upload_s": upload, "n": len(latencies),
    }


@contextmanager
def serve_app(replicas: int, cpus: int) -> Iterator[str]:
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_serve.build({
            "models": COLOR, "log_level": "warning", "serve_min_replicas": replicas, "serve_max_replicas": replicas,
            "serve_num_cpus": cpus / replicas,
        }), name="restore", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 2], help="Serve replica counts to measure; none: make run only")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--body-mib", type=int, default=60)
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, float]]] = []
    with server(COLOR, RESTORE_INTRA_OP_THREADS=str(args.cpus)) as (url, _):
        rows.append(("make run", measure(url, args.clients, args.duration, args.side, args.body_mib)))
    for replicas in args.replicas:
        with serve_app(replicas, args.cpus) as url:
            rows.append((f"Serve, {replicas} replica{'s' if replicas > 1 else ''}", measure(url, args.clients, args.duration, args.side, args.body_mib)))
    base = rows[0][1]
    print(f"\n{args.clients} clients, {args.side}x{args.side} RGB PNG to /denoise ({COLOR}) for {args.duration:g} s; {args.cpus} CPUs; "
          f"{args.body_mib} MiB multipart upload\n")
    print("| server | requests | req/s | vs make run | p50 s | p95 s | /healthz ms (p50) | upload s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['n']:.0f} | {r['rps']:.3f} | {r['rps'] / base['rps']:.2f}x | {r['p50']:.3f} | {r['p95']:.3f} | "
              f"{r['hop_ms']:.1f} | {r['upload_s']:.2f} |")


if __name__ == "__main__":
    main()
