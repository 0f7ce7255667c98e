"""A pre-synthesized pool of weather training pairs, written once, sampled by every run.

Why: on 2 CPU cores the renderers (``training.weather.renderers``, 5-60 ms a crop) would cost a
third of every training step if they ran in the loop, and a loader process would only take the
same cores from the network. So pairs are rendered once, in parallel, into uint8 arrays (8-bit
inputs are what the service sees anyway), and a batch takes random ``patch`` sub-crops of pool
pairs in one of the 8 flip/rot90 modes: each rendered pair yields
``8 * (pool_size - patch + 1) ** 2`` distinct crops.

Layout of ``--out``: ``<group>_clean.npy`` and ``<group>_degraded.npy`` (``N x S x S x 3``
uint8) for every group in ``GROUPS`` (the three weathers, ``clean``, whose inputs only went
through ``renderers.camera``, and heavy rain), and ``pool.json`` with how it was made. A group
added later is rendered into an existing pool without touching the others, and a pool without
it still loads (its rows just cannot be asked for). Pair ``j`` of a group is
a pure function of ``(seed, group, j)``, so the pool can be re-created exactly.

    python -m training.weather.pool --bsds ../shared/data/bsds500 --out runs/weather-pool
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.weather.data import WEATHERS, FloatImage, load_images
from training.weather.renderers import CLEAN, HEAVY_RAIN, render

__all__ = ["GROUPS", "PairPool", "teacher_file", "write_pool", "main"]

GROUPS = (*WEATHERS, CLEAN, HEAVY_RAIN)  # append only: a group's index seeds its pairs
META = "pool.json"

_IMAGES: list[FloatImage] = []  # the training photos, in each worker process


def _crop(image: FloatImage, size: int, rng: np.random.Generator) -> FloatImage:
    ph, pw = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if ph or pw:
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), "reflect")
    top = int(rng.integers(image.shape[0] - size + 1))
    left = int(rng.integers(image.shape[1] - size + 1))
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def _to_uint8(image: FloatImage) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _pair(task: tuple[int, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, group, index, size = task
    rng = np.random.default_rng([seed, GROUPS.index(group), index])
    clean = _crop(_IMAGES[int(rng.integers(len(_IMAGES)))], size, rng)
    return _to_uint8(clean), _to_uint8(render(clean, group, rng))


def _init_worker(bsds: Path, splits: tuple[str, ...]) -> None:
    global _IMAGES
    _IMAGES = load_images(bsds, splits)


def write_pool(
    bsds: Path, out: Path, pairs: int, size: int, seed: int, workers: int,
    splits: tuple[str, ...] = ("train", "val"),
) -> dict[str, object]:
    """Render ``pairs`` pairs of ``size`` px per group into ``out`` (skips groups already there)."""
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / META).read_text()) if (out / META).exists() else {}
    if previous and (previous["pairs"], previous["size"], previous["seed"]) != (pairs, size, seed):
        raise ValueError(f"{out} holds a pool of other settings: {previous}")
    started = time.monotonic()
    with multiprocessing.get_context("fork").Pool(workers, _init_worker, (bsds, splits)) as pool:
        for group in GROUPS:
            if (out / f"{group}_degraded.npy").exists():
                continue
            clean = np.empty((pairs, size, size, 3), np.uint8)
            degraded = np.empty_like(clean)
            tasks = [(seed, group, j, size) for j in range(pairs)]
            for j, (c, d) in enumerate(pool.imap(_pair, tasks, chunksize=16)):
                clean[j], degraded[j] = c, d
            np.save(out / f"{group}_clean.npy", clean)
            np.save(out / f"{group}_degraded.npy", degraded)  # last: marks the group complete
            print(f"{group}: {pairs} pairs, {time.monotonic() - started:.0f} s", flush=True)
    meta = {"pairs": pairs, "size": size, "seed": seed, "splits": list(splits), "groups": list(GROUPS),
            "seconds": round(float(previous.get("seconds", 0)) + time.monotonic() - started, 1)}
    (out / META).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def teacher_file(root: Path, group: str) -> Path:
    """Where a teacher's outputs for the first pairs of ``group`` are kept (``teacher_cache``)."""
    return root / f"{group}_teacher.npy"


class PairPool:
    """Batches from a written pool: a pure function of ``(seed, index)`` (exact resume).

    Where a group has a teacher file (``training.weather.teacher_cache``: a frozen teacher's
    output for its first pairs), ``triples`` also crops the teacher's output at the same place,
    so distillation costs no teacher forward pass in the training loop."""

    def __init__(self, root: Path, patch: int, seed: int) -> None:
        self.meta = json.loads((root / META).read_text())
        if patch > self.meta["size"]:
            raise ValueError(f"patch {patch} is larger than the pool's {self.meta['size']} px pairs")
        self.patch, self.seed = patch, seed
        self.arrays = {
            group: (np.load(root / f"{group}_clean.npy", mmap_mode="r"),
                    np.load(root / f"{group}_degraded.npy", mmap_mode="r"))
            for group in GROUPS if (root / f"{group}_degraded.npy").exists()
        }
        self.teachers = {
            group: np.load(teacher_file(root, group), mmap_mode="r")
            for group in GROUPS if teacher_file(root, group).exists()
        }

    def _crops(self, group: str, rng: np.random.Generator) -> list[np.ndarray | None]:
        """Clean, degraded and teacher (``None`` where the pair has none) crops, one draw."""
        if group not in self.arrays:
            raise ValueError(f"the pool has no {group} pairs; `python -m training.weather.pool` adds them")
        clean, degraded = self.arrays[group]
        j = int(rng.integers(len(clean)))
        size, p = clean.shape[1], self.patch
        top, left = (int(v) for v in rng.integers(0, size - p + 1, 2))
        mode = int(rng.integers(8))
        teacher = self.teachers.get(group)
        arrays = (clean, degraded, teacher if teacher is not None and j < len(teacher) else None)
        out: list[np.ndarray | None] = []
        for array in arrays:
            if array is None:
                out.append(None)
                continue
            crop = np.rot90(array[j, top:top + p, left:left + p], k=mode // 2)
            out.append(crop[::-1] if mode % 2 else crop)
        return out

    def sample(self, group: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (clean, degraded) uint8 ``patch x patch x 3`` crop pair of ``group``."""
        clean, degraded, _ = self._crops(group, rng)
        return clean, degraded  # type: ignore[return-value]

    def triples(
        self, index: int, counts: dict[str, int],
    ) -> tuple[FloatImage, FloatImage, FloatImage, np.ndarray]:
        """As ``batch``, plus the teacher's crops (the clean crop where a row has none) and a
        ``(N,)`` bool mask of the rows that have one. The same draws as ``batch`` (same rows)."""
        rng = np.random.default_rng([self.seed, index])
        rows = [self._crops(group, rng) for group, count in counts.items() for _ in range(count)]
        mask = np.array([t is not None for _, _, t in rows])
        teacher = [t if t is not None else c for c, _, t in rows]
        return (_to_float([c for c, _, _ in rows]), _to_float([d for _, d, _ in rows]),
                _to_float(teacher), mask)

    def batch(self, index: int, counts: dict[str, int]) -> tuple[FloatImage, FloatImage]:
        """(clean, degraded) float32 NCHW in [0, 1]: ``counts[group]`` rows per group, in the
        order of ``counts``."""
        rng = np.random.default_rng([self.seed, index])
        clean, degraded = [], []
        for group, count in counts.items():
            for _ in range(count):
                c, d = self.sample(group, rng)
                clean.append(c)
                degraded.append(d)
        return _to_float(clean), _to_float(degraded)


def _to_float(images: list[np.ndarray]) -> FloatImage:
    """uint8 HWC crops -> float32 NCHW in [0, 1]."""
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.weather.pool", description=__doc__.split("\n")[0])
    parser.add_argument("--bsds", type=Path, default=Path("../shared/data/bsds500"))
    parser.add_argument("--out", type=Path, default=Path("runs/weather-pool"))
    parser.add_argument("--pairs", type=int, default=4000, help="pairs per group")
    parser.add_argument("--size", type=int, default=144, help="side of a stored pair (px)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    meta = write_pool(args.bsds, args.out, args.pairs, args.size, args.seed, args.workers)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
