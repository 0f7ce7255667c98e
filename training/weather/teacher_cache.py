"""Run a frozen teacher once over the first pairs of a pool group and keep its outputs.

Why: PReNet, the strongest rain teacher (``docs/weather.md``), runs six recurrent stages at full
resolution: about 1 M multiply-adds per pixel, several seconds per training batch on 2 CPU
cores, several times the student's own step. Its output for a stored pair never changes, so it is
computed once (on the whole 144 px pair: more context than a crop) and stored as uint8 beside
the pool; ``PairPool.triples`` crops it with the pair. Resumable: the work is done in chunks and
``<group>_teacher.json`` records how many pairs are finished.

    python -m training.weather.teacher_cache --pool runs/weather-pool --group rain \\
        --teacher prenet-rain100h --count 1500
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from training.weather.pool import PairPool, teacher_file
from training.weather.teachers import DEFAULT_ROOT, TEACHERS, load_teacher

__all__ = ["write_teacher_outputs", "main"]


@torch.no_grad()
def write_teacher_outputs(
    pool: Path, group: str, teacher: str, count: int, chunk: int = 8, amp: bool = False,
    root: Path = DEFAULT_ROOT,
) -> dict[str, object]:
    """Teacher outputs for pairs ``0 .. count-1`` of ``group`` into ``<group>_teacher.npy``."""
    degraded = PairPool(pool, 1, 0).arrays[group][1]
    count = min(count, len(degraded))
    meta_path = teacher_file(pool, group).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta and (meta["teacher"], meta["count"]) != (teacher, count):
        raise ValueError(f"{meta_path} was made with {meta['teacher']} for {meta['count']} pairs")
    partial = teacher_file(pool, group).with_suffix(".partial.npy")
    done = int(meta.get("done", 0))
    if done >= count and teacher_file(pool, group).exists():
        return meta
    mode = "r+" if partial.exists() and done else "w+"
    out = np.lib.format.open_memmap(partial, mode=mode, dtype=np.uint8, shape=(count, *degraded.shape[1:]))
    network = load_teacher(teacher, root)
    started = time.monotonic()
    for start in range(done, count, chunk):
        batch = np.asarray(degraded[start:min(start + chunk, count)], dtype=np.float32).transpose(0, 3, 1, 2) / 255
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            restored = network(torch.from_numpy(np.ascontiguousarray(batch))).float()
        out[start:start + len(batch)] = np.round(restored.clamp(0, 1).numpy().transpose(0, 2, 3, 1) * 255)
        out.flush()
        done = start + len(batch)
        meta = {"teacher": teacher, "count": count, "done": done, "amp": amp,
                "seconds": round(float(meta.get("seconds", 0)) + time.monotonic() - started, 1)}
        started = time.monotonic()
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{group}: {done}/{count} pairs, {meta['seconds']:.0f} s", flush=True)
    del out
    partial.replace(teacher_file(pool, group))
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.weather.teacher_cache",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=Path, default=Path("runs/weather-pool"))
    parser.add_argument("--group", required=True)
    parser.add_argument("--teacher", choices=sorted(TEACHERS), required=True)
    parser.add_argument("--count", type=int, default=1500, help="the first pairs of the group")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (avx512_bf16 hosts)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the teachers' weights")
    args = parser.parse_args(argv)
    print(json.dumps(write_teacher_outputs(args.pool, args.group, args.teacher, args.count,
                                           args.chunk, args.amp, args.root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
