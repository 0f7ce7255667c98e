"""Cross-request batching of mixed sizes: 16 clients, 16 image sizes below the tile, buckets off vs on.

    python -m bench.mixed_batching [--model dncnn-color-blind] [--requests 4] [--max-batch 8] [--device cpu]

Each client posts PNGs of its own size (16 sizes from 72x88 to 232x248, all below the tile) one
after another; the server runs with ``RESTORE_MAX_BATCH`` > 1 and fixed 256 px tiles
(``RESTORE_BATCH_SECONDS=0`` and ``RESTORE_TILE_SIZE=256``, so both runs tile alike), once with
``RESTORE_BATCH_BUCKETS=false`` (every size its own shape: batches of one) and once with ``true``
(padded to the 64 px grid). Reported per run: requests per second, input megapixels per second,
the mean batch (tiles per batch, from the server's ``restore_batch_size_tiles`` histogram) and the
padding the buckets cost (pixels computed / pixels asked for, from the service's own planner).
On a CPU a batch is no faster per pixel than its tiles one by one, so expect the mean batch to grow
and throughput to drop by the padding; on a GPU a batch of eight costs about what one does.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import httpx

from bench.service_bench import png, scene, server
from restore.core.manifest import load_manifest
from restore.core.tiling import TILE_GRANULE, Tiling
from restore.service.inference.pipeline import plan_for
from restore.service.settings import DEFAULT_MODELS_DIR, Settings

SIZES = [(72 + 10 * i, 88 + 10 * i) for i in range(16)]  # 72x88 ... 222x238: 16 sizes, all under 256
TILE = 256


def padding_ratio(model: str, bucket: int) -> float:
    """Pixels the model computes for one image of each size over the pixels of those images."""
    spec = next(s for s in load_manifest(DEFAULT_MODELS_DIR) if s.name == model)
    settings = Settings(tile_size=TILE)
    plans = [plan_for(spec, settings, h, w, Tiling(TILE, TILE_GRANULE, bucket)) for h, w in SIZES]
    return sum(p.work for p in plans) / sum(h * w for h, w in SIZES)


def mean_batch(metrics: str, model: str) -> tuple[float, float]:
    """(tiles, batches) counted by the server so far for ``model``."""
    def value(name: str) -> float:
        match = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', metrics, re.M)
        return float(match.group(1)) if match else 0.0

    return value("restore_batch_size_tiles_sum"), value("restore_batch_size_tiles_count")


async def clients(url: str, bodies: list[bytes], requests: int) -> float:
    async def client(http: httpx.AsyncClient, body: bytes) -> None:
        for _ in range(requests):
            response = await http.post(f"{url}/denoise", content=body, headers={"Content-Type": "image/png"})
            response.raise_for_status()

    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=len(bodies))) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http, body) for body in bodies))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dncnn-color-blind")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    bodies = [png(scene(h, w, 3, seed=i)) for i, (h, w) in enumerate(SIZES)]
    megapixels = args.requests * sum(h * w for h, w in SIZES) / 1e6
    print(f"16 clients x {args.requests} requests, sizes {SIZES[0]}..{SIZES[-1]}, {args.model}, "
          f"RESTORE_MAX_BATCH={args.max_batch}, tile {TILE}, device {args.device}")
    print("| buckets | requests/s | input MP/s | mean batch (tiles) | computed / input pixels |")
    print("|---|---|---|---|---|")
    for buckets in (False, True):
        env = {"RESTORE_MAX_BATCH": str(args.max_batch), "RESTORE_BATCH_SECONDS": "0", "RESTORE_TILE_SIZE": str(TILE),
               "RESTORE_BATCH_BUCKETS": str(buckets).lower(), "RESTORE_DEVICE": args.device, "RESTORE_MAX_QUEUE_SECONDS": "3600"}
        with server(args.model, **env) as (url, _):
            asyncio.run(clients(url, bodies[:2], 1))  # warm the shapes' first runs a little
            tiles0, batches0 = mean_batch(httpx.get(f"{url}/metrics").text, args.model)
            wall = asyncio.run(clients(url, bodies, args.requests))
            tiles1, batches1 = mean_batch(httpx.get(f"{url}/metrics").text, args.model)
        ratio = padding_ratio(args.model, TILE_GRANULE if buckets else 0)
        print(f"| {'on' if buckets else 'off'} | {16 * args.requests / wall:.2f} | {megapixels / wall:.3f} | "
              f"{(tiles1 - tiles0) / max(batches1 - batches0, 1):.2f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
