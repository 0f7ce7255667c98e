"""Held-out evaluation of the adverse-weather models: PSNR/SSIM per weather, every method alike.

Usage::

    python -m training.weather.evaluate --testset runs/weather-test --bsds ../shared/data/bsds500 \\
        --teachers runs/weather/teacher-{rain,haze,snow}/last.pt \\
        --stage1 runs/weather/student-stage1/last.pt --stage2 runs/weather/student-stage2/last.pt \\
        --manifest models/onnx/manifest.json [--write-manifest] [--real-snow ../shared/data/weather/real_snow]

Methods, each on the 50 x 3 held-out images (``training.weather.testset.write_test_set``, written if
missing): ``input`` (the degraded image itself), ``teacher`` (the single-weather teacher on its
own weather), ``stage1`` / ``stage2`` (the student after each stage, PyTorch, whole image),
``ort`` (the committed ONNX student, whole image), ``ort-tiled`` (the ONNX student through the
service's tiling at the production tile size, i.e. what ``POST /derain`` returns),
``ort-tiled-256`` (the same with 256-px tiles: many seams), and ``dcp`` (the dark channel prior,
He et al. 2009, on haze only). Every student method also runs on the first ``CLEAN_COUNT`` clean
test photos (column ``clean``: the output against its own input, the "no harm" figure), with
``flat_psnr`` over their flat regions pooled (local standard deviation under ``FLAT_STD``), where a
pattern the network prints (a grid, smudges) shows first. Images are scored as the service returns them: clipped, rounded
to 8 bit; PSNR over all pixels and channels, SSIM as ``training.weather.train.ssim``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import uniform_filter

from restore.core.manifest import update_manifest
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels as quantize
from restore.core.tiling import DEFAULT_TILE
from export.session import cpu_session, tiled_forward
from export.weather import condition_feed, load_student, whole_forward
from training.weather.dark_channel import dehaze
from training.weather.data import WEATHERS
from training.weather.testset import load_test_set, write_test_set
from training.weather.train import restore, ssim

__all__ = ["METHODS", "evaluate", "real_snow_figure", "main"]

CLEAN = "clean"
CLEAN_COUNT = 20
FLAT_STD = 2 / 255
METHODS = ("input", "teacher", "stage1", "stage2", "ort", "ort-tiled", "ort-tiled-256", "ort-tiled-auto", "dcp")
NAME = "weather-unified"

Restorer = Callable[[np.ndarray], np.ndarray]  # float (H, W, 3) in -> float (H, W, 3) out


def flat_mask(clean: np.ndarray, size: int = 9) -> np.ndarray:
    """Pixels whose ``size`` x ``size`` neighbourhood (luminance) varies by less than FLAT_STD: sky,
    walls, the places where any printed pattern is visible."""
    y = clean.mean(axis=2, dtype=np.float64)
    mean = uniform_filter(y, size)
    var = uniform_filter(y * y, size) - mean * mean
    return np.sqrt(np.maximum(var, 0)) < FLAT_STD


def flat_errors(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Sum of squared 8-bit errors of ``out`` against ``ref`` over ``mask``, and the pixel count:
    pooled over photos, since many photos have no flat pixel at all."""
    diff = (out.astype(np.float64) - ref.astype(np.float64))[mask]
    return float(np.sum(diff * diff)), int(diff.size)


def pooled_psnr(errors: Sequence[tuple[float, int]]) -> float:
    """PSNR of the pooled squared errors (inf when they are all zero, nan when nothing was flat)."""
    total, count = sum(e for e, _ in errors), sum(n for _, n in errors)
    if count == 0:
        return float("nan")
    return float("inf") if total == 0 else float(10 * np.log10(255.0**2 * count / total))


def evaluate(
    restorers: dict[str, dict[str, Restorer]], testset: Path, limit: int | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {weather: {"psnr", "ssim", "count"}}}`` for every method offered per weather, and
    ``{method: {"clean": {..., "flat_psnr"}}}`` for the methods offered on clean photos."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    groups = dict.fromkeys(g for by_weather in restorers.values() for g in by_weather)
    for weather in sorted(groups, key=lambda g: (*WEATHERS, CLEAN).index(g.split(":")[0])):
        if weather.startswith(CLEAN):  # "clean", or "clean:<route>" for a conditioned model
            photos = [clean for _, _, clean in load_test_set(testset, WEATHERS[0])[:CLEAN_COUNT]]
            items = [(clean, clean) for clean in photos[:limit]]
        else:
            items = [(degraded, clean) for _, degraded, clean in load_test_set(testset, weather)[:limit]]
        for method, by_weather in restorers.items():
            restorer = by_weather.get(weather)
            if restorer is None:
                continue
            p, s, f = [], [], []
            for degraded, clean in items:
                out, ref = quantize(restorer(degraded)), quantize(clean)
                p.append(psnr(out, ref))
                s.append(ssim(out, ref))
                if weather.startswith(CLEAN):
                    f.append(flat_errors(out, ref, flat_mask(clean)))
            scores.setdefault(method, {})[weather] = {
                "psnr": round(float(np.mean(p)), 3), "ssim": round(float(np.mean(s)), 4),
                "count": len(items),
            }
            if f:
                scores[method][weather]["flat_psnr"] = round(pooled_psnr(f), 3)
            print(f"{method:>14} {weather:>5}: PSNR {np.mean(p):6.2f} dB  SSIM {np.mean(s):.4f}"
                  + (f"  flat {pooled_psnr(f):6.2f} dB" if f else ""), flush=True)
    return scores


#: A conditioned model's routes: the label each passes (``auto``: ``?weather=auto``, blind).
ROUTE_LABELS = {"rain": "rain", "haze": "haze", "snow": "snow", "auto": None}


def _ort_restorers(model_path: Path, entry: dict, method: str) -> dict[str, Restorer]:
    """``method``'s restorer per group. A blind file (model 2) gets one restorer for every weather
    and ``clean``. A conditioned one (model 3) is scored as each route calls it: a weather under
    its own route's label (``-auto`` methods: under ``unknown``), and clean photos through every
    route (``clean:rain`` .. ``clean:auto``: what each route does to a photo without that weather)."""
    session = cpu_session(model_path, 2)
    tile = {"ort": None, "ort-tiled": DEFAULT_TILE, "ort-tiled-256": 256}[method.removesuffix("-auto")]

    def run(label: str | None) -> Restorer:
        if tile is None:
            return lambda x: whole_forward(session, quantize(x), label)
        return lambda x: tiled_forward(session, entry, tile, quantize(x), condition_feed(session, label))

    if not entry.get("weather_labels"):
        return {w: run(None) for w in (*WEATHERS, CLEAN)}
    auto = method.endswith("-auto")
    out = {w: run(None if auto else w) for w in WEATHERS}
    if not auto:
        out.update({f"{CLEAN}:{route}": run(label) for route, label in ROUTE_LABELS.items()})
    return out


def real_snow_figure(folder: Path, restorer: Restorer, out: Path, height: int = 320) -> Path:
    """Real snowy photos (no ground truth): input | output rows, one JPEG for docs/."""
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"}):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        pair = [Image.fromarray(quantize(rgb)), Image.fromarray(quantize(restorer(rgb)))]
        pair = [im.resize((round(im.width * height / im.height), height)) for im in pair]
        for im, label in zip(pair, ("input", "restored")):
            draw = ImageDraw.Draw(im)
            draw.rectangle((0, 0, 8 + 7 * len(label), 14), fill=(0, 0, 0))
            draw.text((4, 2), label, fill=(255, 255, 255))
        rows.append(pair)
    width = max(sum(im.width for im in row) for row in rows)
    sheet = Image.new("RGB", (width, height * len(rows)), (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for im in row:
            sheet.paste(im, (x, r * height))
            x += im.width
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=88)
    return out


def clean_figure(testset: Path, restorer: Restorer, out: Path, gain: float = 8.0) -> Path:
    """The clean test photo with the most flat area (of the first CLEAN_COUNT): input | output |
    ``gain`` x |output - input| on grey, one JPEG for docs/: a pattern the network prints on a clean
    sky is visible here before it moves a PSNR."""
    photos = [clean for _, _, clean in load_test_set(testset, WEATHERS[0])[:CLEAN_COUNT]]
    photo = max(photos, key=lambda x: int(flat_mask(x).sum()))
    restored = quantize(restorer(photo))
    original = quantize(photo)
    diff = np.clip(128 + gain * (restored.astype(np.float32) - original.astype(np.float32)), 0, 255)
    panels = [original, restored, diff.astype(np.uint8)]
    labels = ("clean input", "output", f"{gain:g} x (output - input)")
    width = sum(p.shape[1] for p in panels)
    sheet = Image.new("RGB", (width, photo.shape[0]), (255, 255, 255))
    x = 0
    for panel, label in zip(panels, labels):
        im = Image.fromarray(panel)
        draw = ImageDraw.Draw(im)
        draw.rectangle((0, 0, 8 + 7 * len(label), 14), fill=(0, 0, 0))
        draw.text((4, 2), label, fill=(255, 255, 255))
        sheet.paste(im, (x, 0))
        x += im.width
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=90)
    return out


def _table(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    cleans = list(dict.fromkeys(g for by in scores.values() for g in by if g.startswith(CLEAN)))
    header = [f"{w} PSNR / SSIM" for w in WEATHERS] + [f"{c} PSNR / flat PSNR" for c in cleans]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for method, by_weather in scores.items():
        cells = [
            f"{by_weather[w]['psnr']:.2f} / {by_weather[w]['ssim']:.3f}" if w in by_weather else ""
            for w in WEATHERS
        ]
        cells += [f"{by_weather[c]['psnr']:.2f} / {by_weather[c]['flat_psnr']:.2f}" if c in by_weather else ""
                  for c in cleans]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.weather.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--testset", type=Path, default=Path("runs/weather-test"))
    parser.add_argument("--bsds", type=Path, default=Path("../shared/data/bsds500"))
    parser.add_argument("--teachers", type=Path, nargs=3, metavar=("RAIN", "HAZE", "SNOW"))
    parser.add_argument("--stage1", type=Path)
    parser.add_argument("--stage2", type=Path)
    parser.add_argument("--manifest", type=Path, default=Path("models/onnx/manifest.json"))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--write-manifest", action="store_true",
                        help="store the scores in the weather-unified entry (headline: ort-tiled)")
    parser.add_argument("--real-snow", type=Path, help="folder of real snowy photos -> --figure")
    parser.add_argument("--figure", type=Path, default=Path("docs/weather_real_snow.jpg"))
    parser.add_argument("--clean-figure", type=Path,
                        help="write the no-harm figure (clean photo | ONNX output | amplified difference) here")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--limit", type=int, help="first N images per weather (smoke runs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    write_test_set(args.bsds, args.testset)
    restorers: dict[str, dict[str, Restorer]] = {}
    everywhere = dict.fromkeys((*WEATHERS, CLEAN))  # one blind student: every weather, and clean photos
    if "input" in args.methods:
        restorers["input"] = {w: (lambda x: x) for w in WEATHERS}
    if "teacher" in args.methods and args.teachers:
        teachers = [load_student(p)[0] for p in args.teachers]
        restorers["teacher"] = {
            w: (lambda x, t=t: restore(t, x)) for w, t in zip(WEATHERS, teachers)
        }
    for stage in ("stage1", "stage2"):
        path = getattr(args, stage)
        if stage in args.methods and path:
            model = load_student(path)[0]
            restorers[stage] = {w: (lambda x, m=model: restore(m, x)) for w in everywhere}
    manifest = json.loads(args.manifest.read_text())
    entry = next((e for e in manifest["models"] if e["name"] == NAME), None)
    for method in (m for m in args.methods if m.startswith("ort")):
        if entry is not None:
            restorers[method] = _ort_restorers(args.manifest.parent / entry["file"], entry, method)
    if "dcp" in args.methods:
        restorers["dcp"] = {"haze": dehaze}
    scores = evaluate(restorers, args.testset, args.limit)
    print(_table(scores))
    if args.json:
        args.json.write_text(json.dumps(scores, indent=1))
    if args.real_snow and entry is not None:
        session = cpu_session(args.manifest.parent / entry["file"], 2)
        print(real_snow_figure(args.real_snow, lambda x: whole_forward(session, quantize(x), "snow"), args.figure))
    if args.clean_figure and entry is not None:
        session = cpu_session(args.manifest.parent / entry["file"], 2)
        print(clean_figure(args.testset, lambda x: whole_forward(session, quantize(x)), args.clean_figure))
    if args.write_manifest:
        if entry is None or "ort-tiled" not in scores or args.limit:
            raise SystemExit(f"--write-manifest needs {NAME} in the manifest, the ort-tiled method "
                             "and the whole test set (no --limit)")
        command = "python -m training.weather.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])

        def merge(current: list[dict]) -> list[dict]:
            for e in current:
                if e["name"] == NAME:
                    e["metrics"] = {
                        "heldout": scores["ort-tiled"],
                        "by_method": scores,
                        "note": "held-out synthetic set (training/weather/data.py: 50 BSDS500 test "
                                "images x rain/haze/snow, seed 2022), 8-bit outputs; heldout = "
                                "the ONNX model through the service's tiling",
                        "command": command,
                    }
            return current

        update_manifest(args.manifest, merge)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
