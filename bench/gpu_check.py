"""One command that proves the GPU path the day a GPU is lent (at most about 8 minutes).

    python -m bench.gpu_check                      # on the GPU machine
    python -m bench.gpu_check --dry-run            # anywhere: CPU, tiny sizes, to prove the script runs

For every model in the manifest (``--models`` to choose):

* MP/s at batch 1, 4 and 8 of ``--size`` square tiles, in float32 and in float16 (the float16 copy
  is made on the fly with ONNX Runtime's own ``convert_float_to_float16``, inputs and outputs kept
  float32, so the service could load it unchanged), and the largest difference between the two;
* GPU memory in use after each (``nvidia-smi``; "n/a" where it is absent);
* the model's share of the GPU's dense fp16 tensor peak (``--peak-tflops``, else looked up by the
  GPU's name): FLOP per pixel are counted from the graph's convolutions.

Then the service end to end (``python -m restore.service`` with ``RESTORE_DEVICE=cuda``) on the default
colour denoiser: one 12 MP photo, and 16 concurrent clients, each as MP/s and as a ratio to the
model's own float32 throughput at batch 8.

Where ONNX Runtime has no CUDA provider but PyTorch sees a GPU (a GPU machine with torch and a
CPU-only onnxruntime), the model figures come from PyTorch on the same weights (rebuilt from each
ONNX file's initializers, ``half()`` for float16) and the output says so; the end-to-end part then
runs on the service's CPU path and says that too.

Quality in float16 (DnCNN on BSD68/CBSD68, the issue's 0.05 dB bound) is ``bench.fp16_parity``'s:
``python -m bench.fp16_parity --data ../shared/data/denoise --device cuda`` on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import torch

from bench.model_throughput import TORCH_FROM_ONNX
from bench.service_bench import png, post, scene, server
from export.quantize import float32_weights

MODELS = Path(__file__).resolve().parents[1] / "models" / "onnx"
CUDA = "CUDAExecutionProvider"
#: Dense (no sparsity) fp16 tensor-core peak in TFLOP/s, by a substring of the GPU's name.
FP16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40": 181.0, "L4": 121.0, "A10": 125.0,
                    "V100": 125.0, "T4": 65.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
BATCHES = (1, 4, 8)


def conv_flops_per_pixel(model: onnx.ModelProto, channels: int, side: int = 64) -> float:
    """FLOP per input pixel of every Conv and ConvTranspose (2 x MACs), from shapes inferred at ``side``."""
    proto = float32_weights(model)
    proto.graph.input[0].type.tensor_type.shape.CopyFrom(
        onnx.TensorShapeProto(dim=[onnx.TensorShapeProto.Dimension(dim_value=v) for v in (1, channels, side, side)])
    )
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*inferred.graph.value_info, *inferred.graph.output)}
    weights = {i.name: list(i.dims) for i in inferred.graph.initializer}
    total = 0.0
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.input[1] not in weights:
            continue
        w = weights[node.input[1]]
        out = shapes.get(node.output[0]) if node.op_type == "Conv" else shapes.get(node.input[0])
        if not out or 0 in out:
            continue
        total += 2.0 * out[2] * out[3] * int(np.prod(w))  # per output (Conv) or input (ConvTranspose) position
    return total / (side * side)


def gpu_memory_mib() -> str:
    if shutil.which("nvidia-smi") is None:
        return "n/a"
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] + " MiB" if out.returncode == 0 and out.stdout.strip() else "n/a"


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def peak_for(name: str) -> float | None:
    return next((peak for key, peak in FP16_PEAK_TFLOPS.items() if key in name), None)


def fp16_copy(path: Path, folder: Path) -> Path:
    """The model in float16 (weights and compute), float32 in and out: ORT's own converter."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415 (pulls in onnx; only this copy needs it)


    target = folder / f"{path.stem}.fp16.onnx"
    onnx.save(convert_float_to_float16(float32_weights(onnx.load(str(path))), keep_io_types=True), str(target))
    return target


def timed(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    result = run()  # warm-up; the first run of a shape plans memory (and picks cuDNN algorithms)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def ort_runner(path: Path, provider: str) -> Callable[[np.ndarray], np.ndarray]:
    providers = [provider, "CPUExecutionProvider"] if provider == CUDA else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), providers=providers)
    if provider == CUDA and CUDA not in session.get_providers():
        raise SystemExit(f"{path.name}: ONNX Runtime could not use CUDA")
    return lambda x: np.asarray(session.run(None, {"input": x})[0], dtype=np.float32)


def torch_runner(path: Path, task: str, half: bool, device: str = "cuda") -> Callable[[np.ndarray], np.ndarray]:
    """The model of ``path`` in PyTorch on ``device`` (weights from the file), float32 in and out."""
    module = TORCH_FROM_ONNX[task](onnx.load(str(path))).to(device).eval()
    module = module.half() if half else module

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tx = torch.from_numpy(x).to(device)
            out = module(tx.half() if half else tx)
            out = out[0] if isinstance(out, (tuple, list)) else out
            if device == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

    return run


def backend(dry_run: bool) -> str:
    if dry_run:
        return "ort-cpu (dry run)"
    if CUDA in ort.get_available_providers():
        return "ort-cuda"
    if torch.cuda.is_available():
        return "torch-cuda"
    raise SystemExit("no GPU path: onnxruntime has no CUDA provider and PyTorch sees no GPU (use --dry-run on a CPU)")


def model_rows(entries: list[dict[str, Any]], kind: str, size: int, repeats: int, peak: float | None) -> dict[str, float]:
    """Print one row per model, precision and batch; return each model's float32 MP/s at the largest batch."""
    own: dict[str, float] = {}
    print("| model | precision | batch | MP/s | share of fp16 peak | max abs diff vs float32 | GPU memory |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for entry in entries:
            path = MODELS / entry["file"]
            flops = conv_flops_per_pixel(onnx.load(str(path)), entry["channels"])
            reference: dict[int, np.ndarray] = {}
            for precision in ("float32", "float16"):
                if kind == "torch-cuda":
                    run = torch_runner(path, entry["task"], half=precision == "float16")
                else:
                    target = path if precision == "float32" else fp16_copy(path, Path(scratch))
                    run = ort_runner(target, CUDA if kind == "ort-cuda" else "CPUExecutionProvider")
                for batch in BATCHES:
                    x = np.random.default_rng(batch).random((batch, entry["channels"], size, size), dtype=np.float32)
                    seconds, out = timed(lambda: run(x), repeats)
                    mp_s = batch * size * size / 1e6 / seconds
                    if precision == "float32":
                        reference[batch] = out
                        own[entry["name"]] = mp_s
                    diff = float(np.max(np.abs(out - reference[batch])))
                    share = f"{mp_s * 1e6 * flops / (peak * 1e12):.1%}" if peak else "n/a"
                    print(f"| {entry['name']} | {precision} | {batch} | {mp_s:.3f} | {share} | {diff:.2e} | {gpu_memory_mib()} |", flush=True)
    return own


def end_to_end(model: str, channels: int, query: str, own_mp_s: float, side: int, clients: int, device: str) -> None:
    """The service on one big photo and under ``clients`` concurrent clients, against the model's own speed."""

    photo = png(scene(side, side * 4 // 3, channels))
    small = png(scene(side // 4, side // 3, channels, seed=1))
    with server(model, RESTORE_DEVICE=device, RESTORE_MAX_QUEUE_SECONDS="3600") as (url, _):
        post(url, small, query=query)
        seconds, _ = post(url, photo, query=query)
        big_mp_s = side * (side * 4 // 3) / 1e6 / seconds

        async def many() -> float:
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
                start = time.perf_counter()
                for response in await asyncio.gather(*(http.post(f"{url}/denoise{query}", content=small, headers={"Content-Type": "image/png"}) for _ in range(clients))):
                    response.raise_for_status()
                return time.perf_counter() - start

        wall = asyncio.run(many())
    many_mp_s = clients * (side // 4) * (side // 3) / 1e6 / wall
    print("| end to end | MP/s | ratio to the model's float32 batch-8 MP/s |")
    print("|---|---|---|")
    print(f"| one {side * (side * 4 // 3) / 1e6:.2f} MP photo | {big_mp_s:.3f} | {big_mp_s / own_mp_s:.2f} |")
    print(f"| {clients} concurrent clients, {side // 3}x{side // 4} each | {many_mp_s:.3f} | {many_mp_s / own_mp_s:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one repeat: proves the script, measures nothing")
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense fp16 tensor peak (default: looked up by name)")
    parser.add_argument("--e2e-model", default="dncnn-color-blind")
    args = parser.parse_args(argv)
    kind = backend(args.dry_run)
    size, repeats, side, clients = (32, 1, 96, 2) if args.dry_run else (args.size, args.repeats, 3000, 16)
    entries = [e for e in json.loads((MODELS / "manifest.json").read_text())["models"] if e["default"]]
    if args.models:
        entries = [e for e in entries if e["name"] in args.models]
    name = gpu_name()
    peak = args.peak_tflops or peak_for(name)
    print(f"# gpu_check: {kind}; GPU {name or 'none'}; fp16 peak {peak or 'unknown'} TFLOP/s; "
          f"onnxruntime {ort.__version__}; tiles {size}x{size}, median of {repeats}")
    started = time.perf_counter()
    own = model_rows(entries, kind, size, repeats, peak)
    if args.e2e_model in own:
        if kind == "torch-cuda":
            print("(end to end on the service's CPU path: this onnxruntime has no CUDA provider)")
        entry = next(e for e in entries if e["name"] == args.e2e_model)
        query = "" if entry["sigma"] is None else f"?sigma={entry['sigma']:g}"  # a sigma model serves only its level
        end_to_end(args.e2e_model, entry["channels"], query, own[args.e2e_model], side, clients, "cuda" if kind == "ort-cuda" else "cpu")
    print(f"# done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
