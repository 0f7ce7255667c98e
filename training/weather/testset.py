"""The held-out weather test set (written once, seeded), the example grid of docs/ and the photo
the weather export measures its tile margin on.

``write_test_set`` degrades a seeded choice of BSDS500 *test* images with the generators of
``training.weather.data`` and writes them to disk, so every evaluation scores the same pixels:
``out/{clean,rain,haze,snow}/<name>.png`` plus ``out/testset.json`` (seed, count, every drawn
generator parameter, the input PSNR of each image). Image ``k`` (in name order) and weather ``j``
draw from ``default_rng([seed, k, j])``.

    python -m training.weather.testset testset --bsds ../shared/data/bsds500 --out runs/weather-test
    python -m training.weather.testset grid --bsds ../shared/data/bsds500 --out docs/weather_examples.jpg
    python -m training.weather.testset sample --out samples/weather_sample.png

``export_sample`` is that photo: scikit-image's astronaut resized to 768x1024 under ``add_rain``
(seed 2022), rounded to 8 bit. ``export.weather`` reads the committed PNG rather than calling this
module, since export imports nothing from ``training/``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from skimage import data
from skimage.transform import resize

from restore.core.pixels import to_pixels as quantize
from restore.core.metrics import psnr
from training.weather.data import WEATHERS, FloatImage, add_rain, degrade, read_rgb

__all__ = [
    "TESTSET_VERSION", "write_test_set", "load_test_set", "write_grid", "export_sample",
    "write_export_sample", "main",
]

TESTSET_VERSION = 1


def _to_uint8(image: np.ndarray) -> npt.NDArray[np.uint8]:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _test_choice(bsds_root: Path, count: int, seed: int) -> list[Path]:
    folder = bsds_root / "images" / "test"
    files = sorted(folder.glob("*.jpg"))
    if len(files) < count:
        raise ValueError(f"{folder} holds {len(files)} images, need {count}")
    chosen = np.random.default_rng(seed).choice(len(files), count, replace=False)
    return sorted((files[i] for i in chosen), key=lambda p: p.name)


Made = dict[str, tuple[npt.NDArray[np.uint8], dict[str, Any]]]


def _test_items(
    bsds_root: Path, count: int, seed: int
) -> Iterator[tuple[str, npt.NDArray[np.uint8], Made]]:
    """(name, 8-bit clean, {weather: (8-bit degraded, params)}) of the test set, one by one.

    Image ``k`` (in name order) and weather ``j`` draw from ``default_rng([seed, k, j])``.
    """
    for k, path in enumerate(_test_choice(bsds_root, count, seed)):
        with Image.open(path) as image:
            clean8 = np.asarray(image.convert("RGB"))
        clean = clean8.astype(np.float32) / 255
        made: Made = {}
        for j, weather in enumerate(WEATHERS):
            params: dict[str, Any] = {}
            out = degrade(clean, weather, np.random.default_rng([seed, k, j]), params)
            made[weather] = (_to_uint8(out), params)
        yield path.stem, clean8, made


def write_test_set(bsds_root: Path, out: Path, count: int = 50, seed: int = 2022) -> Path:
    """Write the seeded held-out set: ``out/{clean,rain,haze,snow}/<name>.png``, testset.json.

    Does nothing when ``out/testset.json`` already records this seed, count and version. The
    record is removed first and written last, so an interrupted run is redone, not trusted.
    """
    meta = out / "testset.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        if [old.get(k) for k in ("seed", "count", "version")] == [seed, count, TESTSET_VERSION]:
            return meta
        meta.unlink()
    for folder in ("clean", *WEATHERS):
        (out / folder).mkdir(parents=True, exist_ok=True)
    images: dict[str, Any] = {}
    for name, clean8, made in _test_items(bsds_root, count, seed):
        Image.fromarray(clean8).save(out / "clean" / f"{name}.png")
        entry = {}
        for weather, (degraded8, params) in made.items():
            Image.fromarray(degraded8).save(out / weather / f"{name}.png")
            score = round(psnr(degraded8, clean8), 4)
            entry[weather] = {"psnr": score, "params": params}
        images[name] = entry
    for folder in ("clean", *WEATHERS):  # images of an earlier, different set
        for stale in (out / folder).glob("*.png"):
            if stale.stem not in images:
                stale.unlink()
    summary = {}
    for weather in WEATHERS:
        values = [images[n][weather]["psnr"] for n in images]
        summary[weather] = {"psnr_mean": round(float(np.mean(values)), 3),
                            "psnr_min": min(values), "psnr_max": max(values)}
    record = {"version": TESTSET_VERSION, "seed": seed, "count": count,
              "source": str(bsds_root), "summary": summary, "images": images}
    meta.write_text(json.dumps(record, indent=1))
    return meta


def load_test_set(out: Path, weather: str) -> list[tuple[str, FloatImage, FloatImage]]:
    """(name, degraded, clean) float32 [0, 1] of one weather, in the test set's name order."""
    if weather not in WEATHERS:
        raise ValueError(f"unknown weather {weather!r}; known: {', '.join(WEATHERS)}")
    names = json.loads((out / "testset.json").read_text())["images"]
    return [(n, read_rgb(out / weather / f"{n}.png"), read_rgb(out / "clean" / f"{n}.png"))
            for n in names]


def write_grid(
    bsds_root: Path,
    out: Path,
    rows: int = 4,
    tile_width: int = 320,
    count: int = 50,
    seed: int = 2022,
) -> Path:
    """clean | rain | haze | snow of the first ``rows`` landscape test images, labelled with PSNR.

    The images are those of ``write_test_set(bsds_root, ..., count, seed)``, degraded alike.
    """
    font = ImageFont.load_default(size=max(12, tile_width // 22))
    tiles: list[list[tuple[np.ndarray, str]]] = []
    for name, clean8, made in _test_items(bsds_root, count, seed):
        if clean8.shape[1] < clean8.shape[0]:
            continue
        row = [(clean8, f"clean {name}")]
        for weather in WEATHERS:
            degraded8 = made[weather][0]
            row.append((degraded8, f"{weather} {psnr(degraded8, clean8):.1f} dB"))
        tiles.append(row)
        if len(tiles) == rows:
            break
    if not tiles:
        raise ValueError(f"no landscape image among the {count} test-set images")
    first = tiles[0][0][0]
    tile_height = round(tile_width * first.shape[0] / first.shape[1])
    grid = Image.new("RGB", (tile_width * 4, tile_height * len(tiles)))
    for r, row in enumerate(tiles):
        for c, (array, label) in enumerate(row):
            size = (tile_width, tile_height)
            tile = Image.fromarray(array).resize(size, Image.Resampling.LANCZOS)
            draw = ImageDraw.Draw(tile)
            box = draw.textbbox((6, 4), label, font=font)
            draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
            draw.text((6, 4), label, fill=(255, 255, 255), font=font)
            grid.paste(tile, (c * tile_width, r * tile_height))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, quality=88, optimize=True)
    return out


def export_sample() -> npt.NDArray[np.uint8]:
    """The export's tile-margin photo: the astronaut, 768x1024, with synthetic rain (seed 2022)."""
    clean = resize(data.astronaut(), (768, 1024), anti_aliasing=True).astype(np.float32)
    return quantize(add_rain(clean, np.random.default_rng(2022)))


def write_export_sample(out: Path) -> Path:
    """``export_sample`` as a (lossless) PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(export_sample()).save(out, optimize=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.weather.testset", description=(__doc__ or "").split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    testset = sub.add_parser("testset", help="write the seeded held-out test set")
    grid = sub.add_parser("grid", help="write the example grid image (a JPEG)")
    for p in (testset, grid):
        p.add_argument("--bsds", type=Path, required=True, help="BSDS500 folder (holds images/)")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--count", type=int, default=50, help="test-set size (grid: its first)")
        p.add_argument("--seed", type=int, default=2022)
    sample = sub.add_parser("sample", help="write the photo the weather export checks tiling on")
    sample.add_argument("--out", type=Path, required=True, help="samples/weather_sample.png")
    args = parser.parse_args(argv)
    if args.command == "testset":
        meta = write_test_set(args.bsds, args.out, args.count, args.seed)
        print(json.dumps(json.loads(meta.read_text())["summary"], indent=1))
    elif args.command == "sample":
        print(write_export_sample(args.out))
    else:
        print(write_grid(args.bsds, args.out, count=args.count, seed=args.seed))


if __name__ == "__main__":
    main()
