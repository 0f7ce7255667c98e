"""``restore``: run files and folders through the service, keeping the folder tree and resuming.

Each input file gets one output; an output that exists is skipped unless --overwrite, and outputs
are written under a temporary name and renamed, so a run that is interrupted resumes where it
stopped. Files of at least --big megabytes go through the job API, which reports their tiles.
Exit status: 0 when every file was done or skipped, 1 when any failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from restore.client._base import DEFAULT_URL, Job
from restore.client._client import Client
from restore.client._errors import ConnectionFailed, RestoreError

#: Files read as images (the service reads these formats).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
#: Output format -> file suffix, and input suffix -> the format asked for when --format is not given.
SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}
FORMAT_OF = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff", ".bmp": "png"}

EXAMPLES = """examples:
  restore denoise photo.jpg -o clean.jpg
  restore denoise photos/ -o clean/ --sigma auto -j 2
  restore edges in/ -o out/ --thin
  restore derain in/ -o out/ -j 4 --format png
  RESTORE_URL=http://gpu-box:8000 RESTORE_API_KEY=secret restore dehaze foggy.tif -o clear.tif

Folders are walked recursively and the tree is kept under -o; outputs that exist are skipped
(an interrupted run resumes) unless --overwrite. Exit status: 0 all done or skipped, 1 some
failed, 2 bad usage.
"""


@dataclass(frozen=True)
class Task:
    source: Path
    target: Path
    label: str  # the source as the user named it, for messages


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files and/or folders (walked recursively)")
    common.add_argument("-o", "--output", type=Path, required=True,
                        help="output file (one input file) or folder (the input tree is kept under it)")
    common.add_argument("--format", choices=sorted(SUFFIX), help="output format (default: the input's; edges: png)")
    common.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip them)")
    common.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="files processed at once (default 1)")
    common.add_argument("--big", type=float, default=4.0, metavar="MB",
                        help="files of at least this size use the job API and report their tiles (default 4; 0 = all)")
    common.add_argument("--url", default=os.environ.get("RESTORE_URL", DEFAULT_URL),
                        help=f"service address (env RESTORE_URL; default {DEFAULT_URL})")
    common.add_argument("--api-key", default=os.environ.get("RESTORE_API_KEY"), help="bearer key (env RESTORE_API_KEY)")
    common.add_argument("--retries", type=int, default=5, help="retries of a 503 with Retry-After (default 5)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")

    parser = argparse.ArgumentParser(
        prog="restore", description="Restore images with the restore service: files or whole folders.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
    denoise = commands.add_parser("denoise", parents=[common], help="remove noise (DnCNN)", epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    chooser = denoise.add_mutually_exclusive_group()
    chooser.add_argument("--sigma", help="noise level 15, 25 or 50, or auto (estimate per image); default: the blind model")
    chooser.add_argument("--model", help="a loaded denoise model by name (GET /v1/models), instead of --sigma")
    edges = commands.add_parser("edges", parents=[common], help="edge map (HED)", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    edges.add_argument("--thin", action="store_true", help="one-pixel-wide edges")
    edges.add_argument("--threshold", type=float, help="binary map: 255 where the probability is at least this (0-1)")
    edges.add_argument("--side", choices=["fuse", "1", "2", "3", "4", "5"], help="fused map (default) or a side output")
    edges.add_argument("--depth", type=int, choices=[8, 16], help="bits per pixel (16: PNG or TIFF)")
    for name, what in (("derain", "rain"), ("dehaze", "haze"), ("desnow", "snow")):
        commands.add_parser(name, parents=[common], help=f"remove {what} (one weather model)", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _params(args: argparse.Namespace) -> dict[str, Any]:
    if args.operation == "denoise":
        return {"sigma": args.sigma, "model": args.model}
    if args.operation == "edges":
        return {"thin": args.thin or None, "threshold": args.threshold, "side": args.side, "depth": args.depth}
    return {}


def _target_suffix(source: Path, operation: str, fmt: str | None) -> tuple[str, str]:
    """The output's format and suffix: asked for explicitly, so the file's content matches its name."""
    chosen = fmt or ("png" if operation == "edges" else FORMAT_OF[source.suffix.lower()])
    suffix = source.suffix if fmt is None and operation != "edges" and source.suffix.lower() != ".bmp" else SUFFIX[chosen]
    return chosen, suffix


def plan(inputs: Sequence[Path], output: Path, operation: str, fmt: str | None) -> list[tuple[Task, str]]:
    """Every (source -> target, format). One file into a non-folder -o is that file; folders keep their tree."""
    tasks: list[tuple[Task, str]] = []
    single = len(inputs) == 1 and inputs[0].is_file() and not (output.is_dir() or str(output).endswith(os.sep))
    for given in inputs:
        if not given.exists():
            raise FileNotFoundError(f"{given}: no such file or folder")
        if given.is_file():
            chosen, suffix = _target_suffix(given, operation, fmt)
            target = output if single else output / (given.stem + suffix)
            tasks.append((Task(given, target, str(given)), chosen))
            continue
        for source in sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            chosen, suffix = _target_suffix(source, operation, fmt)
            relative = source.relative_to(given)
            tasks.append((Task(source, output / relative.with_suffix(suffix), str(source)), chosen))
    return tasks


class Progress:
    """Files done/skipped/failed and the tiles of big files, on stderr: one updating line on a
    terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, stream: IO[str], quiet: bool) -> None:
        self.total, self.stream, self.quiet = total, stream, quiet
        self.done = self.skipped = self.failed = 0
        self.tty = stream.isatty()
        self._lock = threading.Lock()

    def _line(self, text: str, final: bool = True) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _counts(self) -> str:
        finished = self.done + self.skipped + self.failed
        return f"[{finished}/{self.total}] {self.done} done, {self.skipped} skipped, {self.failed} failed"

    def file(self, outcome: str, task: Task, message: str = "") -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            if outcome == "failed":
                self._line(f"failed: {task.label}: {message}")
            elif not self.quiet:
                self._line(f"{outcome}: {task.label} -> {task.target}" + (f" ({message})" if message else ""))
            if self.tty and not self.quiet:
                self._line(self._counts(), final=False)

    def tiles(self, task: Task, job: Job) -> None:
        if self.quiet:
            return
        with self._lock:
            text = f"{task.label}: {job.status}, tiles {job.done}/{job.total} ({job.fraction:.0%})"
            self._line(f"{self._counts()} | {text}" if self.tty else text, final=not self.tty)

    def summary(self) -> str:
        return f"restore: {self.done} done, {self.skipped} skipped (output exists), {self.failed} failed"


def _run_one(client: Client, args: argparse.Namespace, task: Task, fmt: str, progress: Progress, big: int) -> None:
    if task.target.exists() and not args.overwrite:
        progress.file("skipped", task, "exists")
        return
    params = {**_params(args), "format": fmt}
    try:
        if task.source.stat().st_size >= big:
            data = client.process(args.operation, task.source, progress=lambda job: progress.tiles(task, job), **params)
        else:
            data = client.run(args.operation, task.source, **params)
        task.target.parent.mkdir(parents=True, exist_ok=True)
        partial = task.target.with_name(task.target.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, task.target)  # never a half-written output that a resumed run would skip
    except ConnectionFailed:
        raise
    except (RestoreError, OSError) as exc:
        progress.file("failed", task, str(exc))
        return
    progress.file("done", task)


def main(argv: Sequence[str] | None = None, stderr: IO[str] | None = None) -> int:
    stderr = stderr or sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    try:
        tasks = plan(args.inputs, args.output, args.operation, args.format)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    if not tasks:
        parser.error("no images found in the inputs (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    progress = Progress(len(tasks), stderr, args.quiet)
    big = int(args.big * 1024 * 1024)
    try:
        with Client(args.url, api_key=args.api_key, retries=args.retries) as client, ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(_run_one, client, args, task, fmt, progress, big) for task, fmt in tasks]:
                future.result()
    except ConnectionFailed as exc:
        stderr.write(f"restore: {exc}\n{progress.summary()}\n")
        return 1
    except KeyboardInterrupt:
        stderr.write(f"\nrestore: interrupted; run the same command again to resume\n{progress.summary()}\n")
        return 130
    stderr.write(progress.summary() + "\n")
    return 1 if progress.failed else 0


if __name__ == "__main__":
    sys.exit(main())
