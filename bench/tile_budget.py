"""Tile side on CPU: overlap overhead against the batch time a newly arrived request waits for.

    python -m bench.tile_budget [--model dncnn-color-blind] [--sides 192 256 320 384 512 768 1024] [--repeats 2]

For each tile side: one ORT run of that tile (median of ``--repeats`` after a first run of the
shape), with ONNX Runtime's CPU arena off (the service's default) and on; the work the service's
tiler plans for a 4 MP (2048x2048) and a 0.25 MP (512x512) image at that side (overlap included);
and what follows: seconds per 4 MP image, seconds for the 0.25 MP image alone, and the longest a
new request waits for the batch in flight (one tile). Last, the side the service picks at load for
RESTORE_BATCH_SECONDS (default 0.5) from its speed probe.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

from restore.core.manifest import load_manifest
from restore.core.tiling import FINE_GRANULE, Tiling, round_up, tile_side_for
from restore.service.inference.engine import available_cpus
from restore.service.inference.pipeline import plan_for
from restore.service.inference.runtime import SPEED_PROBE_SIDE
from restore.service.settings import DEFAULT_MODELS_DIR, Settings


def session(path: str, arena: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cpus()
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def seconds(run: ort.InferenceSession, channels: int, side: int, repeats: int) -> float:
    x = np.random.default_rng(0).random((1, channels, side, side), dtype=np.float32)
    name = run.get_inputs()[0].name
    run.run(None, {name: x})  # the first run of a shape also plans its memory
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dncnn-color-blind")
    parser.add_argument("--sides", type=int, nargs="+", default=[192, 256, 320, 384, 512, 768, 1024])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = Settings()
    spec = next(s for s in load_manifest(DEFAULT_MODELS_DIR) if s.name == args.model)
    runs = {arena: session(str(spec.file), arena) for arena in (False, True)}
    print(f"{args.model}: overlap {spec.tile_overlap(settings.tile_overlap)} px (2 x margin {spec.overlap} + "
          f"{spec.feather_for(settings.tile_overlap)}), "
          f"{available_cpus()} CPUs\n")
    print("| tile | one tile, arena off / on | 4 MP: tiles, work / pixels, seconds | 0.25 MP: tiles, work / pixels, seconds |")
    print("|---|---|---|---|")
    for side in args.sides:
        side = round_up(side, spec.multiple)
        off, on = (seconds(runs[arena], spec.channels, side, args.repeats) for arena in (False, True))
        cells = []
        for height, width in ((2048, 2048), (512, 512)):
            plan = plan_for(spec, settings, height, width, Tiling(side, FINE_GRANULE))  # CPU: one tile per batch
            per_tile = off * plan.tile_shape[0] * plan.tile_shape[1] / side**2  # shrunk tiles cost less
            cells.append(f"{plan.count}, {plan.work / (height * width):.2f}x, {plan.count * per_tile:.1f} s")
        print(f"| {side} | {off:.2f} s / {on:.2f} s | {cells[0]} | {cells[1]} |", flush=True)
    probe = round_up(SPEED_PROBE_SIDE, spec.multiple)
    speed = probe * probe / seconds(runs[False], spec.channels, probe, 2)
    chosen = tile_side_for(
        speed, settings.batch_seconds, overlap=spec.tile_overlap(settings.tile_overlap), multiple=spec.multiple,
        largest=settings.tile_size, smallest=spec.min_tile,
    )
    print(f"\nspeed probe ({probe} px): {speed / 1e6:.3f} MP/s -> tile {chosen} px for RESTORE_BATCH_SECONDS={settings.batch_seconds:g}")


if __name__ == "__main__":
    main()
