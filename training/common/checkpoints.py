"""Training checkpoints: written atomically, resumed only into the settings they were trained with,
and compacted for the repository (``resume/``).

    python -m training.common.checkpoints compact SOURCE TARGET [--weights-only]

A checkpoint is a ``torch.save`` of a plain dict (tensors, numbers, strings, lists and dicts; the
run's settings as ``dataclasses.asdict``), so it names no class of ours and loads with
``weights_only=True`` whatever the modules are called (``tests/training/test_resume_checkpoints.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["check_resumable", "compact_checkpoint", "save_checkpoint"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never leaves a broken checkpoint to resume."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def check_resumable(saved: Any, current: Any, may_differ: frozenset[str]) -> None:
    """Refuse to resume a run whose settings (dataclasses) differ outside ``may_differ``.

    A resumed run must replay the uninterrupted one; only the fields that leave the past
    iterations unchanged (the schedule's end, the device) may change.
    """
    differ = [
        f.name for f in dataclasses.fields(current)
        if f.name not in may_differ and getattr(saved, f.name) != getattr(current, f.name)
    ]
    if differ:
        raise ValueError(f"checkpoint was trained with other settings: {differ}")


def _to_bfloat16(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0:
        return value.to(torch.bfloat16)
    if isinstance(value, dict):
        return {k: _to_bfloat16(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_bfloat16(v) for v in value]
    return value


def compact_checkpoint(source: Path, target: Path, weights_only: bool = False) -> int:
    """Write a small copy of a training checkpoint for the repository; returns its size in bytes.

    Weights and optimizer state (Adam's moments: twice the weights) are stored in bfloat16, half
    their float32 size. That is harmless for resuming: ``load_state_dict`` copies them back into
    float32 parameters and state, the moments are running averages, and rounding a weight to
    bfloat16 (2**-9 relative) moves it far less than one Adam step does (``lr`` ~ 5e-4 on weights of
    ~0.05: about 1%). A resumed run is therefore not bit-identical to an uninterrupted one, but
    close. ``weights_only`` (a finished run that is only read, e.g. a teacher) drops the optimizer.
    """
    state = torch.load(source, map_location="cpu", weights_only=False)
    if weights_only:
        state = {k: v for k, v in state.items() if k not in ("optimizer", "ckt")}
    state = {k: _to_bfloat16(v) if k in ("model", "optimizer", "ckt") else v for k, v in state.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(target, state)
    return target.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.common.checkpoints compact SOURCE TARGET [--weights-only]``."""
    parser = argparse.ArgumentParser(prog="python -m training.common.checkpoints")
    commands = parser.add_subparsers(dest="command", required=True)
    compact = commands.add_parser("compact", help=compact_checkpoint.__doc__.split("\n")[0])
    compact.add_argument("source", type=Path)
    compact.add_argument("target", type=Path)
    compact.add_argument("--weights-only", action="store_true")
    args = parser.parse_args(argv)
    size = compact_checkpoint(args.source, args.target, args.weights_only)
    print(f"{args.target}: {size / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
