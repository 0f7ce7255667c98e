"""What every training command shares: the per-epoch CSV, a dependency-free progress bar, the
machine description for provenance and the check that a resumed run replays the original.

The CSV (``log.csv`` in the run folder) has one row per epoch with the columns ``CSV_COLUMNS``:
``patches`` = iterations x batch size seen so far, ``train_loss`` = mean batch loss of the epoch in
the paper's scaling, ``val_psnr`` in dB, ``elapsed_s`` = training wall time including validation
(summed over resumes), ``iters_per_s`` = training speed of the epoch without validation.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch
import argparse

__all__ = [
    "CSV_NAME", "CSV_COLUMNS", "write_csv", "read_csv", "Progress", "machine_description",
    "check_resumable", "save_checkpoint", "compact_checkpoint",
]

CSV_NAME = "log.csv"
CSV_COLUMNS = (
    "epoch", "iteration", "patches", "lr", "train_loss", "val_psnr", "elapsed_s", "iters_per_s"
)


def write_csv(
    path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS
) -> None:
    """Rewrite the whole log (rows come from the checkpoint, so a resumed run stays consistent)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a log as numbers."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


class Progress:
    """``iteration/total``, loss, lr, speed and ETA: redrawn in place on a terminal, one line
    every ``every_s`` seconds otherwise (e.g. under ``nohup``)."""

    def __init__(
        self, total: int, start: int = 0, stream: TextIO | None = None, every_s: float = 30.0
    ) -> None:
        self.total = total
        self.start = start
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.tty = self.stream.isatty()
        self.t0 = self.last = time.monotonic()

    def update(self, iteration: int, loss: float, lr: float) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < self.every_s and iteration < self.total:
            return
        self.last = now
        rate = (iteration - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - iteration) / rate if rate > 0 else float("inf")
        width = 24
        filled = int(width * iteration / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] {iteration}/{self.total} loss {loss:.4f} lr {lr:.1e} "
                f"{rate:.3f} it/s eta {eta / 60:.1f} min")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()


def machine_description(device: torch.device) -> str:
    """CPU model, cores and thread count, plus the GPU when training on one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads)"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


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
    """``python -m training.common.log compact SOURCE TARGET [--weights-only]``."""
    parser = argparse.ArgumentParser(prog="python -m training.common.log")
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
