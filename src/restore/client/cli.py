"""``restore``: run files and folders through the service, keeping the folder tree and resuming.

Each input file gets one output; an output that exists is skipped unless --overwrite, and outputs
are written under a temporary name and renamed, so a run that is interrupted resumes where it
stopped. Files of at least --big megabytes go through the job API, which reports their tiles.
Exit status: 0 when every file was done or skipped, 1 when any failed, 2 for bad usage, 130
after Ctrl-C (which stops at once: restore.client._runner). A user's mistake (a file that is not
an image or cannot be read, a wrong --url) is a message, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from restore.client._base import DEFAULT_URL
from restore.client._client import Client
from restore.client._runner import Fatal, Progress, Runner, Task

#: Files read as images (the service reads these formats).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
#: Output format -> file suffix, and input suffix -> the format asked for when --format is not given.
SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}
FORMAT_OF = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff", ".bmp": "png"}

EXAMPLES = """examples:
  restore denoise photo.jpg -o clean.jpg
  restore denoise photos/ -o clean/ -j 2
  restore denoise scan.png -o clean.png --sigma blind
  restore edges in/ -o out/ --thin
  restore derain in/ -o out/ -j 4 --format png
  RESTORE_URL=http://gpu-box:8000 RESTORE_API_KEY=secret restore dehaze foggy.tif -o clear.tif

Folders are walked recursively and the tree is kept under -o; outputs that exist are skipped
(an interrupted run resumes) unless --overwrite. Ctrl-C stops at once. Exit status: 0 all
done or skipped, 1 some failed, 2 bad usage, 130 interrupted.
"""


class Parser(argparse.ArgumentParser):
    """Reports an unknown option with the usage of the operation it was given to, not the top level's
    (argparse leaves unknown options to the top-level parser)."""

    operations: dict[str, argparse.ArgumentParser]

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self.operations.get(getattr(parsed, "operation", None) or "", self)
            command.error("unrecognized arguments: " + " ".join(extra))
        return parsed


def _parser() -> Parser:
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
                        help=f"the service's root address (env RESTORE_URL; default {DEFAULT_URL})")
    common.add_argument("--api-key", default=os.environ.get("RESTORE_API_KEY"), help="bearer key (env RESTORE_API_KEY)")
    common.add_argument("--retries", type=int, default=5, help="retries of a 503 with Retry-After (default 5)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")

    parser = Parser(
        prog="restore", description="Restore images with the restore service: files or whole folders.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
    denoise = commands.add_parser("denoise", parents=[common], help="remove noise (DnCNN)", epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    chooser = denoise.add_mutually_exclusive_group()
    chooser.add_argument("--sigma", help="auto (the default: estimate each image's noise and pick the model), 15, 25 "
                         "or 50 (the model for that level), or blind (the blind model, for white noise)")
    chooser.add_argument("--model", help="a loaded denoise model by name (GET /v1/models), instead of --sigma")
    edges = commands.add_parser("edges", parents=[common], help="edge map (HED)", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    edges.add_argument("--thin", action="store_true", help="one-pixel-wide edges")
    edges.add_argument("--threshold", type=float, help="binary map: 255 where the probability is at least this (0-1)")
    edges.add_argument("--side", choices=["fuse", "1", "2", "3", "4", "5"], help="fused map (default) or a side output")
    edges.add_argument("--depth", type=int, choices=[8, 16], help="bits per pixel (16: PNG or TIFF)")
    for name, what in (("derain", "rain"), ("dehaze", "haze"), ("desnow", "snow")):
        commands.add_parser(name, parents=[common], help=f"remove {what} (one weather model; experimental)",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.operations = dict(commands.choices)
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


def _task(source: Path, target: Path | None, output: Path, operation: str, fmt: str | None) -> Task:
    """One named file. One that is not an image is planned too, to be reported as failed while the others run."""
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        refused = f"not an image file (the service reads {', '.join(sorted(IMAGE_SUFFIXES))})"
        return Task(source, target or output / source.name, str(source), "", refused)
    chosen, suffix = _target_suffix(source, operation, fmt)
    return Task(source, target or output / (source.stem + suffix), str(source), chosen)


def plan(inputs: Sequence[Path], output: Path, operation: str, fmt: str | None) -> list[Task]:
    """Every source -> target. One file into a non-folder -o is that file; folders keep their tree."""
    tasks: list[Task] = []
    single = len(inputs) == 1 and inputs[0].is_file() and not (output.is_dir() or str(output).endswith(os.sep))
    for given in inputs:
        if not given.exists():
            raise FileNotFoundError(f"{given}: no such file or folder")
        if given.is_file():
            tasks.append(_task(given, output if single else None, output, operation, fmt))
            continue
        for source in sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            chosen, suffix = _target_suffix(source, operation, fmt)
            tasks.append(Task(source, output / source.relative_to(given).with_suffix(suffix), str(source), chosen))
    return tasks


def service_url(given: str, command: argparse.ArgumentParser) -> str:
    """The service's address from --url / RESTORE_URL: ``localhost:8000`` means http://localhost:8000;
    anything that is not an http(s) address with a host is a usage error."""
    text = given.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = httpx.URL(text)
        port = url.port
    except (httpx.InvalidURL, ValueError) as exc:
        command.error(f"--url {given!r} is not a URL: {exc}")
    if url.scheme not in ("http", "https") or not url.host or "%" in url.host or not 0 < (port or 80) < 65536:
        command.error(f"--url {given!r} is not an http:// or https:// address with a host, such as {DEFAULT_URL}")
    return text.rstrip("/")


def _interrupted(runner: Runner | None, progress: Progress | None, stderr: IO[str]) -> int:
    """After Ctrl-C: stop (nothing more is started or written), say what is done, exit 130."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up takes a second at most: no second Ctrl-C needed
    if runner is not None:
        runner.stop()
    stderr.write("\n" + (progress.summary(interrupted=True) if progress else "restore: interrupted") + "\n")
    stderr.flush()
    return 130


def main(argv: Sequence[str] | None = None, stderr: IO[str] | None = None) -> int:
    stderr = stderr or sys.stderr
    runner: Runner | None = None
    progress: Progress | None = None
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        command = parser.operations[args.operation]
        if args.jobs < 1:
            command.error("-j must be at least 1")
        url = service_url(args.url, command)
        try:
            tasks = plan(args.inputs, args.output, args.operation, args.format)
        except FileNotFoundError as exc:
            command.error(str(exc))
        if not tasks:
            command.error("no images found in the inputs (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        progress = Progress(len(tasks), stderr, args.quiet)
        with Client(url, api_key=args.api_key, retries=args.retries) as client:
            runner = Runner(client, args, _params(args), progress, int(args.big * 1024 * 1024))
            try:
                runner.run(tasks, args.jobs)
            except KeyboardInterrupt:  # stop before the client closes under the uploads in flight
                return _interrupted(runner, progress, stderr)
    except KeyboardInterrupt:
        return _interrupted(runner, progress, stderr)
    except Fatal as exc:
        stderr.write(f"restore: {exc}\n" + (progress.summary() + "\n" if progress else ""))
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    stderr.write(progress.summary() + "\n")
    return 1 if progress.failed else 0


if __name__ == "__main__":
    sys.exit(main())
