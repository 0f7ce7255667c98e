"""The evidence for ``sigma=auto``'s rule: each colour model on white noise and on noise under JPEG 4:2:0.

Usage::

    OMP_NUM_THREADS=1 python -m training.dncnn.auto_rule --data ../shared/data/denoise \\
        --manifest models/onnx/manifest.json [--every 9] [--crop 192] [--models NAME ...]

Every ``--every``-th CBSD68 image, its centre ``--crop`` square, under Gaussian noise (8-bit PNG),
Gaussian noise then JPEG quality 90 4:2:0, and Poisson-Gaussian sensor noise with and without that
JPEG (``training.dncnn.camera_noise.TestFamily``; seeds fixed per image and condition). For each:
the mean ``restore.core.noise_level`` estimate and its range, the noisy PSNR, each colour denoise model
of the manifest (ONNX Runtime, whole image) and the model the rule picks for the mean estimate.
"""

from __future__ import annotations

import argparse
import io
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from restore.core.manifest import read_manifest
from restore.core.metrics import psnr
from restore.core.noise_level import NoiseEstimate, estimate_noise, pick_model
from restore.core.pixels import to_pixels
from training.dncnn.camera_noise import TestFamily
from training.dncnn.evaluate import denoise, make_session, session_denoiser
from training.dncnn.images import load_set

__all__ = ["CONDITIONS", "main"]

#: (label, family): the noisy file of each condition.
CONDITIONS: tuple[tuple[str, TestFamily], ...] = (
    *((f"Gaussian {s}, PNG", TestFamily(f"g{s}", gaussian=s)) for s in (5, 10, 15, 20, 25, 30)),
    *((f"Gaussian {s}, JPEG 4:2:0", TestFamily(f"g{s}-jpeg", gaussian=s, quality=90)) for s in (15, 25, 35, 50)),
    ("Poisson-Gaussian (shot 0.01), PNG", TestFamily("pg01", shot=0.01)),
    ("Poisson-Gaussian (shot 0.01), JPEG 4:2:0", TestFamily("pg01-jpeg", shot=0.01, quality=90)),
    ("Poisson-Gaussian (shot 0.03), JPEG 4:2:0", TestFamily("pg03-jpeg", shot=0.03, quality=90)),
)


def _crop(image: np.ndarray, side: int) -> np.ndarray:
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side])


def _picked(entries: list[dict[str, Any]], estimate: NoiseEstimate) -> str:
    """The model the service's rule (``restore.core.noise_level.pick_model``) takes for ``estimate``."""
    index = pick_model(estimate, [(e["sigma"], e.get("noise", "gaussian")) for e in entries])
    return str(entries[index]["name"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.dncnn.auto_rule", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding CBSD68/")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--every", type=int, default=9, help="every N-th CBSD68 image")
    parser.add_argument("--crop", type=int, default=192, help="centre square side")
    parser.add_argument("--models", nargs="*", help="colour models to compare (default: those loaded by default)")
    args = parser.parse_args(argv)
    colour = [e for e in read_manifest(args.manifest) if e["task"] == "denoise" and e["channels"] == 3]
    entries = [e for e in colour if e["name"] in args.models] if args.models else [e for e in colour if e["default"]]
    entries.sort(key=lambda e: (e["sigma"] is not None, e["sigma"] or 0))
    sessions = {e["name"]: make_session(args.manifest.parent / e["file"]) for e in entries}
    images = [(name, _crop(clean, args.crop)) for name, clean in load_set(args.data / "CBSD68", 3, None)[::args.every]]

    print("| input | estimate | noisy | " + " | ".join(sessions) + " | auto picks |")
    print("|---|---|---|" + "---|" * len(sessions) + "---|")
    for label, family in CONDITIONS:
        estimates, noisy_scores, scores = [], [], {name: [] for name in sessions}
        for name, clean in images:
            rng = np.random.default_rng([7, zlib.crc32(f"{family.name}/{name}".encode())])
            noisy = np.asarray(Image.open(io.BytesIO(family.file_bytes(clean, rng))).convert("RGB"))
            estimates.append(estimate_noise(noisy, 255).sigma or 0.0)
            noisy_scores.append(psnr(noisy, clean))
            for model, session in sessions.items():
                scores[model].append(psnr(to_pixels(denoise(session_denoiser(session), noisy / np.float32(255))), clean))
        ratio = estimate_noise(noisy, 255).chroma_ratio  # the condition's kind, from its last image
        picked = _picked(entries, NoiseEstimate(float(np.mean(estimates)), ratio))
        cells = [f"{np.mean(estimates):.1f} ({min(estimates):.1f}-{max(estimates):.1f})", f"{np.mean(noisy_scores):.2f}",
                 *(f"{np.mean(v):.2f}" for v in scores.values()), picked]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
