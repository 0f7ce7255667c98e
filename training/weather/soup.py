"""Average two checkpoints of the same student along one fine-tuning path, choosing the mix on
validation photos, never on the held-out set.

Usage::

    python -m training.weather.soup --a resume/weather/student-stage2.pt \\
        --b resume/weather/student-stage2-continued.pt --out runs/soup/student-soup.pt

Why: the continued stage 2 (more clean rows, docs/weather.md) traded 0.1-0.4 dB on every weather
for +6 dB on clean photos. Two fine-tunings that share their start sit in one basin, so their
weight average is a model too (Wortsman et al., "Model soups", ICML 2022; "Robust fine-tuning of
zero-shot models" (WiSE-FT), CVPR 2022), and a mix can keep the first model's weather gains while
taking part of the second's no-harm: one more network for no training at all.

Selection rule (fixed before any mix is scored): among ``--alphas`` (the share of ``--b``), keep
the one with the highest clean PSNR whose PSNR on every weather is at least that of ``--a`` alone,
all on ``--val-count`` BSDS500 *test* photos outside the held-out set, degraded with the seeded
validation degradations of ``training.weather.train.validation_set``. If no mix qualifies, ``--a``
itself (alpha 0) is kept. Whole photos by default (``--crop 0``), as the service restores them:
scored on 256 px centre crops, the continued model beat 2.0 on every weather, while on whole
held-out photos it loses on every weather (docs/weather.md), so crops do not rank these models.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
import torch

from export.weather import load_student
from training.weather.data import WEATHERS
from training.weather.renderers import CLEAN
from training.weather.train import held_out_names, validate, validation_set


def mix(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` for floating tensors, in float32; others (counters) from ``b``."""
    if a.keys() != b.keys():
        raise ValueError("the checkpoints hold different networks")
    return {
        k: (1 - alpha) * a[k].float() + alpha * b[k].float() if b[k].is_floating_point() else b[k]
        for k in b
    }


def choose(scores: Mapping[float, Mapping[str, float]]) -> float:
    """The selection rule of the module docstring; ``scores[0.0]`` is ``--a`` alone."""
    base = scores[0.0]
    allowed = [
        alpha
        for alpha, s in scores.items()
        if all(s[f"psnr_{w}"] >= base[f"psnr_{w}"] for w in WEATHERS)
    ]
    return max(allowed, key=lambda alpha: (scores[alpha][f"psnr_{CLEAN}"], -alpha))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.weather.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="the model to beat (alpha 0)")
    parser.add_argument("--b", type=Path, required=True, help="the other fine-tuning (alpha 1)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0])
    parser.add_argument("--bsds", type=Path, default=Path("../shared/data/bsds500"))
    parser.add_argument("--testset", type=Path, default=Path("runs/weather-test"), help="held-out set to exclude")
    parser.add_argument("--val-count", type=int, default=40)
    parser.add_argument("--crop", type=int, default=0, help="centre crop size; 0: whole photos")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    exclude = held_out_names(args.testset)
    if not exclude:
        raise SystemExit(f"no held-out set under {args.testset} to exclude (python -m training.weather.testset)")
    sets = validation_set(args.bsds, exclude, args.val_count, crop=args.crop or None)
    model, _ = load_student(args.a)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    other, meta = load_student(args.b)  # the soup keeps --b's config and metadata
    b = other.state_dict()
    scores: dict[float, dict[str, float]] = {}
    for alpha in sorted({0.0, *args.alphas}):
        model.load_state_dict(mix(a, b, alpha))
        with torch.inference_mode():
            scores[alpha] = validate(model, sets)
        print(f"alpha {alpha:.2f}: " + "  ".join(f"{w} {scores[alpha][f'psnr_{w}']:.3f}" for w in (*WEATHERS, CLEAN)), flush=True)
    best = choose(scores)
    print(f"chosen alpha {best:.2f}")

    # The soup has no schedule of its own: its command is this one, its training is that of --a and --b.
    meta.update(command="python -m training.weather.soup " + shlex.join(argv if argv is not None else sys.argv[1:]),
                iteration=None, elapsed_s=0.0, cpu_s=0.0, history=[])
    meta["soup"] = {
        "a": str(args.a), "b": str(args.b), "alpha": best, "val_count": args.val_count, "crop": args.crop,
        "scores": {str(k): v for k, v in scores.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**meta, "model": mix(a, b, best), "ckt": None, "optimizer": None}, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(meta["soup"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
