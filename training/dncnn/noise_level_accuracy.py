"""How well ``restore.core.noise_level`` (the estimate behind ``/denoise?sigma=auto``) reads the noise level.

Usage::

    OMP_NUM_THREADS=1 python -m training.dncnn.noise_level_accuracy --data ../shared/data/denoise \\
        [--sets Set12 CBSD68] [--sigmas 5 10 15 20 25 30 40 50] [--limit N] [--camera DIR]

Each image as the service receives it: the clean image, then with Gaussian noise of each sigma
(``training.dncnn.evaluate``'s per-image seeds, added in float, then clipped and rounded to 8
bit), and for colour sets also saved as a JPEG at quality 90 with 4:2:0 chroma, the file most
photos arrive as. ``--camera`` adds the families of the realistic CBSD68 set
(``training.dncnn.camera_testset``), whose nominal level is not one sigma (only the estimate is
shown). Colour rows show the service's luma estimate, for comparison the mean of the three
per-channel estimates, and the chroma-to-luma noise ratio that tells white noise from noise under
4:2:0 chroma (``restore.core.noise_level.NoiseEstimate``). Prints one markdown table: mean estimate,
mean / spread (std) / worst relative error over the images, the ratio's range and the estimator's
CPU time per image (the whole ``estimate_noise``, chroma included; run it with one BLAS thread).
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from restore.core.noise_level import estimate_noise
from restore.core.pixels import to_pixels
from training.dncnn.camera_noise import TEST_FAMILIES, encode_jpeg
from training.dncnn.camera_testset import load_family
from training.dncnn.evaluate import add_noise, noise_rng
from training.dncnn.images import load_set

__all__ = ["Row", "per_channel_sigma", "measure", "markdown", "main"]

SIGMAS = (5, 10, 15, 20, 25, 30, 40, 50)
JPEG_QUALITY = 90
Condition = tuple[str, float | None, Callable[[str, np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Row:
    test_set: str
    condition: str
    sigma: float | None  # nominal per-channel level; None: clean or not one level
    estimates: tuple[float, ...]
    per_channel: tuple[float, ...]  # colour only
    chroma_ratios: tuple[float, ...]  # colour only
    seconds: float  # mean estimator CPU time per image

    def errors(self, values: Sequence[float]) -> np.ndarray:
        assert self.sigma is not None
        return (np.asarray(values) - self.sigma) / self.sigma * 100


def per_channel_sigma(color: np.ndarray) -> float:
    """The alternative to luma: the mean of the three channels' own estimates."""
    values = [estimate_noise(color[:, :, c:c + 1], 255).sigma for c in range(color.shape[2])]
    return float(np.mean([v for v in values if v is not None]))


def measure(test_set: str, condition: str, sigma: float | None, images: Sequence[tuple[str, np.ndarray]],
            noisy_of: Callable[[str, np.ndarray], np.ndarray]) -> Row:
    estimates, per_channel, ratios, seconds = [], [], [], 0.0
    for name, clean in images:
        noisy = noisy_of(name, clean)
        noisy = noisy[:, :, None] if noisy.ndim == 2 else noisy
        started = time.process_time()  # CPU time: the machine may be shared
        value = estimate_noise(noisy, 255)
        seconds += time.process_time() - started
        estimates.append(float("nan") if value.sigma is None else value.sigma)
        if noisy.shape[2] == 3:
            per_channel.append(per_channel_sigma(noisy))
            ratios.append(float("nan") if value.chroma_ratio is None else value.chroma_ratio)
    return Row(test_set, condition, sigma, tuple(estimates), tuple(per_channel), tuple(ratios), seconds / len(images))


def _gaussian(test_set: str, sigma: int) -> Callable[[str, np.ndarray], np.ndarray]:
    return lambda name, clean: to_pixels(add_noise(clean, sigma, noise_rng(test_set, name, sigma)))


def _gaussian_jpeg(test_set: str, sigma: int) -> Callable[[str, np.ndarray], np.ndarray]:
    def noisy_of(name: str, clean: np.ndarray) -> np.ndarray:
        data = encode_jpeg(_gaussian(test_set, sigma)(name, clean), JPEG_QUALITY, "4:2:0")
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return noisy_of


def _summary(row: Row, values: Sequence[float]) -> list[str]:
    if row.sigma is None:
        return [f"{np.mean(values):.2f}", f"{np.min(values):.2f} to {np.max(values):.2f}", "", ""]
    errors = row.errors(values)
    return [f"{np.mean(values):.2f}", f"{errors.mean():+.1f}%", f"{errors.std():.1f}%",
            f"{errors[np.argmax(np.abs(errors))]:+.1f}%"]


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| set | input | sigma | mean estimate | mean error (clean: range) | spread (std) | worst "
        "| per-channel mean estimate | per-channel mean error | chroma ratio | CPU ms / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        luma = _summary(row, row.estimates)
        channels = _summary(row, row.per_channel)[:2] if row.per_channel else ["", ""]
        ratio = f"{np.min(row.chroma_ratios):.2f} to {np.max(row.chroma_ratios):.2f}" if row.chroma_ratios else ""
        sigma = "" if row.sigma is None else f"{row.sigma:g}"
        cells = [row.test_set, row.condition, sigma, *luma, *channels, ratio, f"{row.seconds * 1000:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.dncnn.noise_level_accuracy",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding Set12/, CBSD68/")
    parser.add_argument("--sets", nargs="+", default=["Set12", "CBSD68"])
    parser.add_argument("--sigmas", nargs="+", type=int, default=list(SIGMAS))
    parser.add_argument("--limit", type=int, help="first N images per set (smoke tests)")
    parser.add_argument("--camera", type=Path, help="realistic CBSD68 set (training.dncnn.camera_testset)")
    args = parser.parse_args(argv)
    rows = []
    for test_set in args.sets:
        channels = 3 if test_set.startswith("C") else 1
        images = load_set(args.data / test_set, channels, args.limit)
        conditions: list[Condition] = [("clean", None, lambda name, clean: clean)]
        conditions += [("Gaussian, 8 bit", s, _gaussian(test_set, s)) for s in args.sigmas]
        if channels == 3:
            conditions += [(f"Gaussian, JPEG q{JPEG_QUALITY} 4:2:0", s, _gaussian_jpeg(test_set, s)) for s in args.sigmas]
        for condition, sigma, noisy_of in conditions:
            rows.append(measure(test_set, condition, sigma, images, noisy_of))
            print(f"{test_set} {condition} {sigma}: {np.mean(rows[-1].estimates):.2f}", flush=True)
    if args.camera is not None:
        clean_set = dict(load_set(args.data / "CBSD68", 3, args.limit))
        for family in TEST_FAMILIES:
            noisy = load_family(args.camera, family.name)
            images = [(name, clean) for name, clean in clean_set.items() if Path(name).stem in noisy]
            nominal = family.gaussian or None
            row = measure("CBSD68", family.name, nominal, images, lambda name, _: noisy[Path(name).stem])
            rows.append(row)
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
