"""Plot learning curves (validation PSNR vs iterations) from ``training.dncnn.train`` CSV logs.

Usage::

    python -m training.common.plot_curve runs/dncnn-s25/log.csv --out docs/dncnn_s25_learning_curve.png \\
        [--label "ours, CPU"] [--reference "authors' DnCNN-S=30.4387"] [--title ...] \\
        [--x patches]

``--x patches`` puts runs with different batch sizes on one axis: what they cost in compute.

Drawn with Pillow only (no plotting dependency): one line per log, dashed horizontal reference
lines, nice ticks on both axes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from training.common.log import read_csv

__all__ = ["nice_ticks", "load_series", "plot_curves", "main"]

SIZE = (900, 560)
MARGIN = (80, 50, 30, 60)  # left, top, right, bottom
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
REFERENCE_COLOR = "#555555"
Series = tuple[str, list[float], list[float]]
X_AXES = {"iteration": "iterations", "patches": "training patches seen"}  # log column -> label


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 x 10^k apart) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def load_series(path: Path, label: str, x: str = "iteration") -> Series:
    """``(label, x values, validation PSNR)`` from one ``train_log`` CSV; ``x`` is a column."""
    rows = read_csv(path)
    return label, [float(r[x]) for r in rows], [float(r["val_psnr"]) for r in rows]


def plot_curves(
    series: Sequence[Series], references: Sequence[tuple[str, float]], title: str, out: Path,
    x_label: str = "iterations",
) -> None:
    """Write a PNG of ``(label, x values, psnr)`` curves and labelled horizontal lines."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    xs = [x for _, its, _ in series for x in its] or [0.0, 1.0]
    ys = [y for _, _, ps in series for y in ps] + [v for _, v in references] or [0.0, 1.0]
    x_ticks = nice_ticks(0.0, max(xs))
    y_ticks = nice_ticks(min(ys) - 0.05, max(ys) + 0.05)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]

    def to_px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    thousands = x_ticks[-1] >= 10_000  # "400k", not "400000" or "4e+05"
    for x in x_ticks:
        px, _ = to_px(x, y_ticks[0])
        draw.line([(px, top), (px, bottom)], fill="#e6e6e6")
        text = f"{x / 1000:g}k" if thousands else f"{x:g}"
        draw.text((px, bottom + 6), text, fill="black", font=small, anchor="mt")
    for y in y_ticks:
        _, py = to_px(x_ticks[0], y)
        draw.line([(left, py), (right, py)], fill="#e6e6e6")
        draw.text((left - 6, py), f"{y:g}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, SIZE[1] - 18), x_label, fill="black", font=font,
              anchor="mm")
    draw.text(((left + right) / 2, top / 2), title, fill="black", font=font, anchor="mm")
    label = Image.new("RGB", (200, 24), "white")
    ImageDraw.Draw(label).text((100, 12), "PSNR (dB)", fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, (top + bottom) // 2 - 100))

    legend_x, legend_y = right - 330, bottom - 12 - 22 * len(series)  # lower right: curves rise
    for name, value in references:
        _, py = to_px(x_ticks[0], value)
        for start in range(int(left), int(right), 14):
            draw.line([(start, py), (min(start + 8, right), py)], fill=REFERENCE_COLOR, width=2)
        draw.text((right - 8, py - 4), f"{name}: {value:.2f}", fill=REFERENCE_COLOR, font=small,
                  anchor="rb")
    for index, (name, its, psnrs) in enumerate(series):
        color = COLORS[index % len(COLORS)]
        points = [to_px(x, y) for x, y in zip(its, psnrs)]
        if len(points) > 1:
            draw.line(points, fill=color, width=3)
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
        final = f"{name} (last {psnrs[-1]:.2f} dB)" if psnrs else name
        draw.line([(legend_x, legend_y + 8), (legend_x + 26, legend_y + 8)], fill=color, width=3)
        draw.text((legend_x + 34, legend_y + 8), final, fill="black", font=small, anchor="lm")
        legend_y += 22
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.common.plot_curve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("logs", type=Path, nargs="+", help="log.csv files")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--label", action="append", default=[], help="one per log")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=PSNR")
    parser.add_argument("--title", default="DnCNN validation PSNR")
    parser.add_argument("--x", choices=tuple(X_AXES), default="iteration",
                        help="x axis: optimizer steps, or training patches seen")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    labels = args.label + [p.parent.name for p in args.logs[len(args.label):]]
    series = [load_series(path, label, args.x) for label, path in zip(labels, args.logs)]
    references = []
    for item in args.reference:
        name, sep, value = item.rpartition("=")
        if not sep:
            raise SystemExit(f"--reference expects NAME=PSNR, got {item!r}")
        references.append((name, float(value)))
    plot_curves(series, references, args.title, args.out, X_AXES[args.x])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
