"""Score every candidate teacher of a weather against our own, on our held-out set and on rain we did not render.

    python -m training.weather.teacher_eval --testset runs/weather-test --weathers rain haze \\
        --outside runs/outside-rain/test runs/outside-rain/train \\
        --own rain=resume/weather/teacher-rain.pt haze=resume/weather/teacher-haze.pt \\
        --onnx models/onnx/weather-unified.onnx --limit 12 --scores runs/teacher-eval.json

Why: the student learns each weather from its best teacher, and "best" must hold on rain someone
else rendered too (our renderer is what our own teachers were trained on). Methods, per weather:
``input`` (the degraded image itself), every registered public teacher of that weather
(``training.weather.teachers``), ``own`` (a checkpoint of our single-weather teacher,
``export.weather.load_student``) and ``student`` (the served ONNX student, whole image, blind).
Sets: ``heldout`` (``training.weather.testset``, the first ``--limit`` images per weather) and, for
rain, each ``--outside`` folder of pairs ``rain/<name>.png`` / ``norain/<name>.png``. Scores are
the service's: outputs clipped and rounded to 8 bit, PSNR over all pixels and channels of whole
images against the clean image (as ``training.weather.evaluate``).

Every image's score is written to ``--scores`` as soon as it is known and read back on the next
run, so a run on a busy machine can stop anywhere and resume, and ``--limit`` can grow.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from export.session import cpu_session
from export.weather import load_student, whole_forward
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels as quantize
from training.weather.data import WEATHERS, FloatImage, read_rgb
from training.weather.teachers import DEFAULT_ROOT, load_teacher, teachers_of
from training.weather.testset import load_test_set
from training.weather.train import restore

__all__ = ["load_pairs", "restorers_for", "evaluate", "table", "main"]

Restorer = Callable[[FloatImage], np.ndarray]  # float (H, W, 3) in [0, 1] -> float (H, W, 3)
Scores = dict[str, dict[str, dict[str, float]]]  # set -> method -> image -> PSNR (dB)
HELDOUT = "heldout"


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_pairs(folder: Path) -> list[tuple[str, FloatImage, FloatImage]]:
    """(name, rainy, clean) of ``folder/rain/*.png`` and ``folder/norain/<same name>``, in natural
    name order; a rainy image without its clean twin fails loudly."""
    rainy = sorted((folder / "rain").glob("*.png"), key=lambda p: _natural(p.stem))
    if not rainy:
        raise FileNotFoundError(f"no rain/*.png under {folder}")
    pairs = []
    for path in rainy:
        clean = folder / "norain" / path.name
        if not clean.is_file():
            raise FileNotFoundError(f"{path} has no clean twin {clean}")
        pairs.append((path.stem, read_rgb(path), read_rgb(clean)))
    return pairs


def _torch_restorer(model: torch.nn.Module) -> Restorer:
    def run(image: FloatImage) -> np.ndarray:
        with torch.inference_mode():
            return restore(model, image)

    return run


def restorers_for(
    weather: str, root: Path, own: Path | None = None, onnx: Path | None = None
) -> Iterator[tuple[str, Restorer]]:
    """(method, restorer) for ``weather``: input, each public teacher, ours, the served student.
    Loaded one at a time as the caller iterates, so one network is in memory at a time."""
    yield "input", lambda x: x
    for name in teachers_of(weather):
        yield name, _torch_restorer(load_teacher(name, root))
    if own is not None:
        yield "own", _torch_restorer(load_student(own)[0])
    if onnx is not None:
        session = cpu_session(onnx, 2)
        yield "student", lambda x: whole_forward(session, quantize(x))


def evaluate(
    sets: dict[str, list[tuple[str, FloatImage, FloatImage]]],
    restorers: Iterator[tuple[str, Restorer]],
    scores: Scores,
    save: Callable[[Scores], None] = lambda s: None,
) -> Scores:
    """Fill ``scores[set][method][image]`` for every set and method not scored yet; ``save`` is
    called after each image."""
    for method, restorer in restorers:
        for set_name, items in sets.items():
            done = scores.setdefault(set_name, {}).setdefault(method, {})
            todo = [(n, d, c) for n, d, c in items if n not in done]
            started = time.monotonic()
            for name, degraded, clean in todo:
                done[name] = round(psnr(quantize(restorer(degraded)), quantize(clean)), 3)
                save(scores)
            if todo:
                seconds = (time.monotonic() - started) / len(todo)
                print(f"{set_name:>16} {method:>16}: {len(todo)} images, {seconds:.1f} s each", flush=True)
    return scores


def table(scores: Scores, sets: dict[str, list[str]]) -> str:
    """Markdown: one row per method, per set the mean PSNR over ``sets[set]`` (the images asked for)
    and its gain over ``input``; a method missing an image of a set leaves that cell empty."""
    methods = list(dict.fromkeys(m for s in sets for m in scores.get(s, {})))
    head = "| method | " + " | ".join(f"{s} (n={len(n)}) PSNR / gain" for s, n in sets.items()) + " |"
    lines = [head, "|---|" + "---|" * len(sets)]
    for method in methods:
        cells = []
        for set_name, names in sets.items():
            got = scores.get(set_name, {})
            if not all(n in got.get(method, {}) for n in names):
                cells.append("")
                continue
            mean = float(np.mean([got[method][n] for n in names]))
            base = float(np.mean([got["input"][n] for n in names])) if "input" in got else float("nan")
            cells.append(f"{mean:.2f} / {mean - base:+.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.weather.teacher_eval",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--testset", type=Path, default=Path("runs/weather-test"),
                        help="the held-out set (python -m training.weather.testset testset ...)")
    parser.add_argument("--weathers", nargs="+", default=["rain", "haze"], choices=WEATHERS)
    parser.add_argument("--outside", type=Path, nargs="*", default=[],
                        help="folders of rain/ and norain/ pairs rendered by others (rain only)")
    parser.add_argument("--own", nargs="*", default=[], metavar="WEATHER=CHECKPOINT",
                        help="our own teacher of a weather")
    parser.add_argument("--onnx", type=Path, help="the served student (whole image, blind)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the public teachers' weights")
    parser.add_argument("--limit", type=int, help="first N images of each set")
    parser.add_argument("--scores", type=Path, default=Path("runs/teacher-eval.json"),
                        help="per-image scores, read back and extended (resumable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    own = {}
    for item in args.own:
        weather, _, path = item.partition("=")
        if weather not in WEATHERS or not path:
            raise SystemExit(f"--own takes WEATHER=CHECKPOINT with WEATHER in {WEATHERS}, got {item!r}")
        own[weather] = Path(path)
    scores: Scores = json.loads(args.scores.read_text()) if args.scores.is_file() else {}

    def save(current: Scores) -> None:
        args.scores.parent.mkdir(parents=True, exist_ok=True)
        partial = args.scores.with_suffix(".partial")
        partial.write_text(json.dumps(current, indent=1) + "\n")
        partial.replace(args.scores)

    asked: dict[str, list[str]] = {}
    for weather in args.weathers:
        sets = {f"{HELDOUT}-{weather}": load_test_set(args.testset, weather)[: args.limit]}
        if weather == "rain":
            sets.update({f"outside-{folder.name}": load_pairs(folder)[: args.limit] for folder in args.outside})
        asked.update({s: [n for n, _, _ in items] for s, items in sets.items()})
        evaluate(sets, restorers_for(weather, args.root, own.get(weather), args.onnx), scores, save)
    print(table(scores, asked))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
