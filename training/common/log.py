"""What every training command logs: the per-epoch CSV, a dependency-free progress bar and the
machine description for provenance (checkpoints: ``training.common.checkpoints``).

The CSV (``log.csv`` in the run folder) has one row per epoch with the columns ``CSV_COLUMNS``:
``patches`` = iterations x batch size seen so far, ``train_loss`` = mean batch loss of the epoch in
the paper's scaling, ``val_psnr`` in dB, ``elapsed_s`` = training wall time including validation
(summed over resumes), ``iters_per_s`` = training speed of the epoch without validation.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch

__all__ = [
    "CSV_NAME", "CSV_COLUMNS", "write_csv", "read_csv", "Progress", "machine_description",
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
