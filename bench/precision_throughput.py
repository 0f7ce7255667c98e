"""Megapixels per second of float32 vs int8 (ONNX Runtime, CPU), per model, on this machine.

    python -m bench.precision_throughput --int8 runs/int8 [--size 512] [--repeats 5] [--write]
    python -m bench.precision_throughput --int8 runs/int8-hed --write   # HED's variant, timed alike
    python -m bench.precision_throughput            # the variants shipped in models/onnx/manifest.json

Any model of the manifest is timed the same way (a denoiser or HED: the entry's channel count,
input ``input``, every output computed, only the time kept). Both files of a model run on the
same input, one after the other, in sessions set up as the service sets them up (all CPUs it may
use, arena off, full graph optimization), alternating for ``--repeats`` rounds so a change of
load hits both alike; the median time is kept. ``--write``
stores the figures, with the CPU and its int8 flags, in ``DIR/variants.json`` for
``export.quantize ship``. Take them on an idle machine: check ``top`` first.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.quantize import read_variants, record_metrics
from restore.core.cpu import cpu_int8_flags, session_entries
from restore.service.inference.engine import available_cpus

MODELS = Path(__file__).resolve().parents[1] / "models" / "onnx"


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    for key, value in session_entries(cpu_int8_flags()).items():  # as the service runs int8
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(float_path: Path, int8_path: Path, channels: int, size: int, repeats: int, threads: int) -> tuple[float, float]:
    """Median seconds of one ``size`` x ``size`` image through each file, rounds interleaved."""
    x = np.random.default_rng(0).random((1, channels, size, size), dtype=np.float32)
    runs = {path: session(path, threads) for path in (float_path, int8_path)}
    times: dict[Path, list[float]] = {path: [] for path in runs}
    for path, s in runs.items():
        s.run(None, {"input": x})  # warm-up: the first run of a shape plans its memory
    for _ in range(repeats):
        for path, s in runs.items():
            start = time.perf_counter()
            s.run(None, {"input": x})
            times[path].append(time.perf_counter() - start)
    return statistics.median(times[float_path]), statistics.median(times[int8_path])


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--int8", type=Path, metavar="DIR", help="variants.json folder (export.quantize make); default: shipped variants")
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="store the figures in DIR/variants.json")
    args = parser.parse_args(argv)
    if args.write and args.int8 is None:
        parser.error("--write needs --int8 DIR")
    entries = {e["name"]: e for e in json.loads((MODELS / "manifest.json").read_text())["models"]}
    if args.int8 is not None:
        pairs = {name: (MODELS / entries[name]["file"], args.int8 / v["file"]) for name, v in read_variants(args.int8).items()}
    else:
        pairs = {name: (MODELS / e["file"], MODELS / e["variants"]["int8"]["file"]) for name, e in entries.items() if "int8" in e.get("variants", {})}
    if args.models:
        pairs = {name: pair for name, pair in pairs.items() if name in args.models}
    if not pairs:
        raise SystemExit("no int8 variants to measure")
    threads = available_cpus()
    flags = sorted(cpu_int8_flags())
    megapixels = args.size * args.size / 1e6
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {cpu_name()}, int8 flags {flags or 'none'}, {threads} threads, onnxruntime {ort.__version__}, "
          f"{args.size}x{args.size} batch 1, median of {args.repeats}, {when}")
    print("| model | float32 MP/s | int8 MP/s | speed-up |")
    print("|---|---|---|---|")
    for name, (float_path, int8_path) in pairs.items():
        float_s, int8_s = compare(float_path, int8_path, entries[name]["channels"], args.size, args.repeats, threads)
        print(f"| {name} | {megapixels / float_s:.3f} | {megapixels / int8_s:.3f} | {float_s / int8_s:.2f}x |", flush=True)
        if args.write:
            record_metrics(args.int8, name, {"speed": {
                "float32_mp_per_s": round(megapixels / float_s, 4), "int8_mp_per_s": round(megapixels / int8_s, 4),
                "speedup": round(float_s / int8_s, 3), "size": args.size, "threads": threads, "cpu": cpu_name(),
                "cpu_int8_flags": flags, "onnxruntime": ort.__version__, "date": when,
                "command": "python -m bench.precision_throughput " + shlex.join(sys.argv[1:] if argv is None else argv),
            }})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
