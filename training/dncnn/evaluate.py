"""Reproduce the DnCNN paper's PSNR table with the committed ONNX models (ONNX Runtime, CPU).

Usage::

    python -m training.dncnn.evaluate --data ../shared/data/denoise \\
        --manifest models/onnx/manifest.json [--models NAME ...] [--sets BSD68 Set12 CBSD68] \\
        [--limit N] [--fp32-reference NAME=PATH.onnx] [--camera DIR] [--int8 DIR] [--write-manifest]

Protocol (the authors' MATLAB demo, in numpy):

1. clean = 8-bit image / 255 (float64); gray sets are read as "L", CBSD68 as "RGB";
2. noisy = clean + sigma / 255 * N(0, 1), in float, not clipped (as in the paper);
   the noise of image ``f`` of set ``s`` at level ``sigma`` comes from
   ``numpy.random.default_rng([NOISE_SEED, sigma, crc32(f"{s}/{f}")])`` so every model sees the
   same noisy image and results do not depend on the order of evaluation;
3. the whole image (no tiling) runs through the model as float32 NCHW;
4. output is clipped to [0, 1] and rounded to 8 bit; PSNR = 10 log10(255^2 / MSE) against the
   clean 8-bit image over all pixels and channels; the table reports the mean over images.

Gray models run on BSD68 and Set12, color models on CBSD68; sigma-specific models at their sigma,
blind models at 15, 25 and 50. ``--camera DIR`` adds, for every colour model, each family of the
realistic CBSD68 set written by ``training.dncnn.camera_testset`` (steps 1-2 replaced by reading
its 8-bit PNG or JPEG file), stored as ``metrics["CBSD68-camera"][family]``. ``--fp32-reference`` runs a float32-stored export of the same
weights on the same jobs and records ``fp16_storage_delta_db`` = PSNR(fp16) - PSNR(fp32).
``--int8 DIR`` runs each int8 variant listed in ``DIR/variants.json`` (``export.quantize make``) on
its float model's jobs, the same noisy images, and stores its PSNR and ``delta_db`` = PSNR(int8) -
PSNR(float32) per set and sigma in that file (``export.quantize ship`` reads them from there).
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort

from export.quantize import read_variants, record_metrics
from export.session import cpu_session
from restore.core.hashing import sha256_file
from restore.core.manifest import read_manifest, update_metrics
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels
from training.dncnn.camera_noise import TEST_FAMILIES
from training.dncnn.camera_testset import load_family
from training.dncnn.images import load_set

__all__ = [
    "NOISE_SEED", "Job", "Denoiser", "add_noise", "noise_rng", "session_denoiser", "denoise", "evaluate_set",
    "evaluate_files", "plan_jobs", "main",
]

NOISE_SEED = 20170201  # fixed; see the module docstring for how each image's seed is derived
BLIND_SIGMAS = (15, 25, 50)
GRAY_SETS = ("BSD68", "Set12")
COLOR_SETS = ("CBSD68",)
THREADS = 2
#: A denoiser as the evaluation runs it: (1, C, H, W) float32 noisy image -> the same shape restored.
Denoiser = Callable[[np.ndarray], np.ndarray]
# Paper (Zhang et al. 2017, Tables II/III and the README of cszn/DnCNN); the CBSD68 value is the
# paper's CDnCNN-B at sigma 25 (the shared README measured 31.22 with the same model).
METRICS_NOTE = (
    "mean PSNR in dB (training.dncnn.evaluate protocol: noise added in float, seed "
    f"{NOISE_SEED} per image, output clipped and rounded to 8 bit); weights stored as "
    "float16, computed in float32; fp16_storage_delta_db = PSNR(fp16-stored) - "
    "PSNR(fp32-stored) where measured (dncnn-gray-s25); CBSD68-camera: the realistic families "
    "of training.dncnn.camera_testset, the stored 8-bit PNG or JPEG file denoised"
)
PAPER_PSNR: dict[tuple[str, str, int], float] = {
    ("S", "BSD68", 15): 31.73, ("S", "BSD68", 25): 29.23, ("S", "BSD68", 50): 26.23,
    ("B", "BSD68", 15): 31.61, ("B", "BSD68", 25): 29.16, ("B", "BSD68", 50): 26.23,
    ("S", "Set12", 15): 32.86, ("S", "Set12", 25): 30.44, ("S", "Set12", 50): 27.18,
    ("B", "Set12", 15): 32.68, ("B", "Set12", 25): 30.36, ("B", "Set12", 50): 27.21,
    ("B", "CBSD68", 25): 31.23,
}


@dataclass(frozen=True)
class Job:
    """One table cell: a model on a test set at one noise level."""

    model: str
    path: Path
    channels: int
    blind: bool
    test_set: str
    sigma: int  # 0 for a camera family
    family: str = ""  # a family of the realistic CBSD68 set (training.dncnn.camera_testset)


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``clean`` (uint8) / 255 plus Gaussian noise of std sigma / 255, float32, not clipped."""
    noise = rng.standard_normal(clean.shape) * (sigma / 255.0)
    return (clean.astype(np.float64) / 255.0 + noise).astype(np.float32)


def noise_rng(test_set: str, filename: str, sigma: int) -> np.random.Generator:
    """The documented per-image noise generator (independent of model and evaluation order)."""
    image_id = zlib.crc32(f"{test_set}/{filename}".encode())
    return np.random.default_rng([NOISE_SEED, int(sigma), image_id])


def make_session(path: Path) -> ort.InferenceSession:
    """CPU session with the thread count this evaluation was timed with."""
    return cpu_session(path, THREADS)


def session_denoiser(session: ort.InferenceSession) -> Denoiser:
    """The exported model's ``input -> output`` run as a ``Denoiser``."""
    return lambda x: session.run(["output"], {"input": x})[0]


def denoise(model: Denoiser, noisy: np.ndarray) -> np.ndarray:
    """Run a HxW or HxWxC float32 image through the model; same layout back."""
    x = noisy[None, None] if noisy.ndim == 2 else noisy.transpose(2, 0, 1)[None]
    y = model(np.ascontiguousarray(x, dtype=np.float32))
    return y[0, 0] if noisy.ndim == 2 else y[0].transpose(1, 2, 0)


def evaluate_set(
    model: Denoiser,
    images: Sequence[tuple[str, np.ndarray]],
    test_set: str,
    sigma: int,
) -> list[float]:
    """Per-image PSNR of one model on one set at one sigma."""
    scores = []
    for name, clean in images:
        noisy = add_noise(clean, sigma, noise_rng(test_set, name, sigma))
        scores.append(psnr(to_pixels(denoise(model, noisy)), clean))
    return scores


def evaluate_files(
    model: Denoiser, images: Sequence[tuple[str, np.ndarray]], noisy: dict[str, np.ndarray]
) -> list[float]:
    """Per-image PSNR of one model on stored noisy 8-bit images (keyed by file stem)."""
    return [psnr(to_pixels(denoise(model, noisy[Path(name).stem] / np.float32(255.0))), clean)
            for name, clean in images]


def plan_jobs(
    entries: Sequence[dict[str, Any]],
    root: Path,
    models: Sequence[str] | None,
    sets: Sequence[str] | None,
    families: Sequence[str] = (),
) -> list[Job]:
    """Table cells for the selected denoise entries of the manifest."""
    known = {e["name"] for e in entries if e["task"] == "denoise"}
    unknown = set(models or ()) - known
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; denoise models: {sorted(known)}")
    jobs = []
    for entry in entries:
        if entry["task"] != "denoise" or (models and entry["name"] not in models):
            continue
        blind = entry["sigma"] is None
        sigmas = BLIND_SIGMAS if blind else (int(entry["sigma"]),)
        for test_set in GRAY_SETS if entry["channels"] == 1 else COLOR_SETS:
            if sets and test_set not in sets:
                continue
            path = root / entry["file"]
            for sigma in sigmas:
                jobs.append(Job(entry["name"], path, entry["channels"], blind, test_set, sigma))
            for family in families if test_set == "CBSD68" else ():
                jobs.append(Job(entry["name"], path, entry["channels"], blind, test_set, 0, family))
    return jobs


def _paper(job: Job) -> float | None:
    """The paper's number for this cell, if it reports one."""
    return PAPER_PSNR.get(("B" if job.blind else "S", job.test_set, job.sigma))


def _markdown(rows: list[tuple[Job, float, float | None]]) -> str:
    lines = ["| model | set | sigma | PSNR (dB) | paper | diff |", "|---|---|---|---|---|---|"]
    for job, value, paper in rows:
        ref = f"{paper:.2f}" if paper is not None else ""
        diff = f"{value - paper:+.2f}" if paper is not None else ""
        noise = job.family or str(job.sigma)
        cells = (job.model, job.test_set, noise, f"{value:.2f}", ref, diff)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.dncnn.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder holding BSD68/, Set12/, CBSD68/"
    )
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--models", nargs="*", help="model names (default: every denoise model)")
    parser.add_argument("--sets", nargs="*", choices=GRAY_SETS + COLOR_SETS)
    parser.add_argument("--limit", type=int, help="first N images per set (smoke tests)")
    parser.add_argument(
        "--fp32-reference", action="append", default=[], metavar="NAME=PATH",
        help="float32-stored export of model NAME: measure the fp16 storage delta on its jobs",
    )
    parser.add_argument(
        "--write-manifest", action="store_true", help="store the metrics in the manifest"
    )
    parser.add_argument("--int8", type=Path, metavar="DIR",
                        help="also score the int8 variants of DIR/variants.json (export.quantize make)")
    parser.add_argument("--camera", type=Path,
                        help="realistic CBSD68 set (training.dncnn.camera_testset): score its families too")
    args = parser.parse_args(argv)
    if (args.write_manifest or args.int8) and args.limit:
        parser.error("--write-manifest and --int8 record figures: they need the full sets (drop --limit)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    entries = read_manifest(args.manifest)
    root = args.manifest.parent
    references: dict[str, str] = {}
    for item in args.fp32_reference:
        name, sep, ref_path = item.partition("=")
        if not sep or not ref_path:
            raise SystemExit(f"--fp32-reference expects NAME=PATH, got {item!r}")
        references[name] = ref_path
    families = [f.name for f in TEST_FAMILIES] if args.camera else []
    variants = read_variants(args.int8) if args.int8 else {}
    models = args.models or (sorted(variants) if args.int8 else None)
    jobs = plan_jobs(entries, root, models, args.sets, families)
    for name, variant in variants.items():
        entry = next((e for e in entries if e["name"] == name), None)
        if entry is None or entry["sha256"] != variant["float_sha256"]:
            raise SystemExit(f"{name}: the int8 variant was made from another float file; quantize again")
        if sha256_file(args.int8 / variant["file"]) != variant["sha256"]:
            raise SystemExit(f"{name}: {variant['file']} changed since it was made; quantize again")
    noisy_files = {family: load_family(args.camera, family) for family in families}
    for path in sorted({job.path for job in jobs}):
        entry = next(e for e in entries if root / e["file"] == path)
        if sha256_file(path) != entry["sha256"]:
            raise SystemExit(f"{path}: sha256 differs from the manifest; re-export first")

    cache: dict[tuple[str, int], list[tuple[str, np.ndarray]]] = {}
    sessions: dict[Path, ort.InferenceSession] = {}
    rows: list[tuple[Job, float, float | None]] = []
    results: dict[str, dict[str, Any]] = {}
    for job in jobs:
        key = (job.test_set, job.channels)
        if key not in cache:
            cache[key] = load_set(args.data / job.test_set, job.channels, args.limit)
        if job.path not in sessions:
            sessions = {job.path: make_session(job.path)}  # one model in memory at a time
        start = time.perf_counter()
        cell = (job.test_set, job.sigma)
        metrics = results.setdefault(job.model, {})
        if job.family:
            noisy = noisy_files[job.family]
            value = float(np.mean(evaluate_files(session_denoiser(sessions[job.path]), cache[key], noisy)))
            metrics.setdefault("CBSD68-camera", {})[job.family] = round(value, 4)
            rows.append((job, value, None))
            before = np.mean([psnr(noisy[Path(name).stem], clean) for name, clean in cache[key]])
            print(f"{job.model} CBSD68 {job.family}: {value:.4f} dB (input {before:.2f} dB, "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)
            continue
        value = float(np.mean(evaluate_set(session_denoiser(sessions[job.path]), cache[key], *cell)))
        rows.append((job, value, _paper(job)))
        metrics.setdefault(job.test_set, {})[str(job.sigma)] = round(value, 4)
        seconds = time.perf_counter() - start
        print(f"{job.model} {job.test_set} sigma={job.sigma}: {value:.4f} dB "
              f"({len(cache[key])} images, {seconds:.0f} s)", flush=True)
        if job.model in references:
            ref_session = make_session(Path(references[job.model]))
            ref_value = float(np.mean(evaluate_set(session_denoiser(ref_session), cache[key], *cell)))
            delta = value - ref_value
            deltas = metrics.setdefault("fp16_storage_delta_db", {})
            deltas.setdefault(job.test_set, {})[str(job.sigma)] = round(delta, 6)
            print(f"  fp32-stored reference: {ref_value:.4f} dB, "
                  f"fp16 - fp32 = {delta:+.6f} dB", flush=True)
        if job.model in variants:
            variant = variants[job.model]
            int8_value = float(np.mean(evaluate_set(session_denoiser(make_session(args.int8 / variant["file"])), cache[key], *cell)))
            measured = variant.setdefault("metrics", {})
            measured.setdefault(job.test_set, {})[str(job.sigma)] = round(int8_value, 4)
            measured.setdefault("delta_db", {}).setdefault(job.test_set, {})[str(job.sigma)] = round(int8_value - value, 4)
            measured["note"] = "mean PSNR in dB, training.dncnn.evaluate protocol; delta_db = int8 - float32 on the same noisy images"
            record_metrics(args.int8, job.model, measured)  # after every cell: a long run keeps what it measured
            print(f"  int8: {int8_value:.4f} dB, int8 - float32 = {int8_value - value:+.4f} dB", flush=True)

    print()
    print(_markdown(rows))
    if args.write_manifest:
        evaluated = {e["name"]: e["sha256"] for e in entries if e["name"] in results}
        update_metrics(args.manifest, evaluated, lambda name, old: {**old, **results[name], "note": METRICS_NOTE})
        print(f"\nmetrics written to {args.manifest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
