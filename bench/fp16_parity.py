"""DnCNN in float16 against float32 on the evaluation sets: is half precision safe to serve?

    python -m bench.fp16_parity --data ../shared/data/denoise [--device cpu|cuda] [--models NAME ...] [--limit N]

Each served denoiser (``--models``; default: every DnCNN in the manifest) on its set at its noise
level (BSD68 for gray models, CBSD68 for colour ones; blind models at sigma 25), with
``training.dncnn.evaluate``'s noise, clipping and 8-bit rounding: mean PSNR of the float32 run, of the
float16 run (weights and activations in float16) and their difference. The issue's bound for
serving float16 on a GPU is 0.05 dB.

Backends: on ``--device cuda`` with ONNX Runtime's CUDA provider, the float16 copy
``bench.gpu_check`` times (ORT's ``convert_float_to_float16``); otherwise PyTorch on the same weights
(rebuilt from the ONNX file's initializers, ``half()``), on the CPU where the CPU has float16
arithmetic (oneDNN uses avx512_fp16 / AMX-FP16; elsewhere PyTorch falls back to slow reference
kernels) or on a GPU. PyTorch's float16 convolutions, like cuDNN's, round each layer's output to
float16 and accumulate in float32, so the CPU figure measures what storing DnCNN's activations in
float16 costs; the line printed first names the backend, and a CUDA run remains the proof for a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.gpu_check import CUDA, fp16_copy, ort_runner, torch_runner
from restore.core.manifest import read_manifest
from training.dncnn.evaluate import Denoiser, evaluate_set
from training.dncnn.images import load_set

MODELS = Path(__file__).resolve().parents[1] / "models" / "onnx"
BLIND_SIGMA = 25


def backend(device: str) -> str:
    if device == "cuda" and CUDA in ort.get_available_providers():
        return "ort-cuda"
    return f"torch-{device}"


def runners(path: Path, kind: str, scratch: Path) -> tuple[Denoiser, Denoiser]:
    """(float32, float16) runners of one model file."""
    if kind == "ort-cuda":
        return ort_runner(path, CUDA), ort_runner(fp16_copy(path, scratch), CUDA)
    device = kind.removeprefix("torch-")
    return torch_runner(path, "denoise", False, device), torch_runner(path, "denoise", True, device)


def parity(
    run32: Denoiser, run16: Denoiser, images: list[tuple[str, np.ndarray]], test_set: str, sigma: int
) -> tuple[float, float]:
    """Mean PSNR (dB) of the two runs on ``images`` with the evaluation's noise at ``sigma``."""
    db32, db16 = (float(np.mean(evaluate_set(run, images, test_set, sigma))) for run in (run32, run16))
    return db32, db16


def denoisers(manifest: Path, names: list[str] | None) -> list[dict[str, Any]]:
    return [e for e in read_manifest(manifest) if e["task"] == "denoise" and (not names or e["name"] in names)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding BSD68/ and CBSD68/")
    parser.add_argument("--manifest", type=Path, default=MODELS / "manifest.json")
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--limit", type=int, help="first N images per set (smoke runs)")
    args = parser.parse_args(argv)
    kind = backend(args.device)
    print(f"# fp16_parity: {kind}; onnxruntime {ort.__version__}")
    print("| model | set | sigma | float32 dB | float16 dB | float16 - float32 |")
    print("|---|---|---|---|---|---|")
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for entry in denoisers(args.manifest, args.models):
            test_set = "BSD68" if entry["channels"] == 1 else "CBSD68"
            if test_set not in sets:
                sets[test_set] = load_set(args.data / test_set, entry["channels"], args.limit)
            sigma = BLIND_SIGMA if entry["sigma"] is None else int(entry["sigma"])
            run32, run16 = runners(args.manifest.parent / entry["file"], kind, Path(scratch))
            db32, db16 = parity(run32, run16, sets[test_set], test_set, sigma)
            print(f"| {entry['name']} | {test_set} | {sigma} | {db32:.4f} | {db16:.4f} | {db16 - db32:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
