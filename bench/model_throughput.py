"""Megapixels per second of every model in the manifest: ONNX Runtime vs PyTorch eager, same weights.

    python -m bench.model_throughput [--size 512] [--repeats 3] [--device cpu|cuda] [--models NAME ...] \
        [--models-dir DIR] [--ort-only]

``--models-dir`` times another folder's files (e.g. a re-export beside the committed one; for an
A/B on a noisy machine run the two alternately, e.g. under ``farm-bench --vs``).

The PyTorch model is rebuilt from the ONNX file's own initializers, so both runtimes compute with
exactly the same weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.dncnn import dncnn_from_onnx
from export.hed import hed_from_onnx
from export.weather import condition_feed, weather_from_onnx
from restore.service.inference.engine import available_cpus

MODELS = Path(__file__).resolve().parents[1] / "models" / "onnx"
#: How to rebuild the PyTorch model of each task from an ONNX file's own initializers.
TORCH_FROM_ONNX = {"denoise": dncnn_from_onnx, "edges": hed_from_onnx, "weather": weather_from_onnx}


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="folder holding manifest.json and the files")
    parser.add_argument("--ort-only", action="store_true", help="skip PyTorch eager")
    args = parser.parse_args()
    threads = available_cpus()
    torch.set_num_threads(threads)
    manifest = json.loads((args.models_dir / "manifest.json").read_text())["models"]
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    megapixels = args.size * args.size / 1e6
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {threads} threads, "
          f"{args.size}x{args.size} batch 1, median of {args.repeats}, device {args.device}")
    print("| model | ORT MP/s | PyTorch eager MP/s | ORT speed-up |")
    print("|---|---|---|---|")
    for entry in manifest:
        if entry["task"] not in TORCH_FROM_ONNX or (args.models and entry["name"] not in args.models):
            continue
        path = args.models_dir / entry["file"]
        session = ort.InferenceSession(str(path), options, providers=providers)
        x = np.random.default_rng(0).random((1, entry["channels"], args.size, args.size), dtype=np.float32)
        feeds = {"input": x, **condition_feed(session, None)}  # a conditioned weather model: blind
        ort_s = timed(lambda: session.run(None, feeds), args.repeats)
        if args.ort_only:
            print(f"| {entry['name']} | {megapixels / ort_s:.3f} | | |", flush=True)
            continue
        module = TORCH_FROM_ONNX[entry["task"]](onnx.load(str(path))).to(args.device)
        tx = torch.from_numpy(x).to(args.device)

        def eager() -> None:
            with torch.inference_mode():
                module(tx)
            if args.device == "cuda":
                torch.cuda.synchronize()

        torch_s = timed(eager, args.repeats)
        print(f"| {entry['name']} | {megapixels / ort_s:.3f} | {megapixels / torch_s:.3f} | {torch_s / ort_s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
