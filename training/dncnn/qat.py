"""Quantization-aware fine-tuning of a served DnCNN, so that ONNX Runtime's static int8 keeps its quality.

Usage::

    python -m training.dncnn.qat --manifest models/onnx/manifest.json --data ../shared/data \\
        --model dncnn-color-s25 --out runs/qat --float-tail-layers 1 [--steps 300] [--minutes 40] [--resume]
    # then quantize the fine-tuned float file (it carries its learned activation scales), not the
    # served one, keeping the same layers float, and measure it as any variant:
    python -m export.quantize make --manifest models/onnx/manifest.json --data ../shared/data \\
        --out runs/int8-qat --models dncnn-color-s25 --float-from runs/qat --float first last residual penultimate

Why: post-training static int8 (``export.quantize``) keeps the sigma-specific gray DnCNNs within
0.05 dB but costs the colour ones 0.6-1.1 dB (docs/benchmarks.md). Measured on CDnCNN sigma 25
(8 BSD432 crops, this module's simulation): rounding the weights alone costs 0.49 dB, spread over
the body (0.00-0.05 dB per layer); rounding the activations 0.85 dB, of which 0.75 dB is the last
hidden layer's (its range reaches 16.8 while its other channels stay near 1, so one uint8 step
swallows them). Hence two remedies, together: keep that last hidden layer float
(``--float-tail-layers 1``, ``export.quantize --float penultimate``), and fine-tune the float
weights while the forward pass sees the int8 rounding (straight-through gradients; Jacob et al.,
CVPR 2018; Krishnamoorthi, arXiv 1806.08342), learning each activation's scale as well (LSQ, Esser
et al., ICLR 2020). What the network is fine-tuned against is what ORT later does to it:

* weights of every convolution ``export.quantize`` quantizes are rounded per output channel,
  symmetric int8 in [-127, 127], scale = max |w| / 127 (ORT's ``QInt8`` with ``WeightSymmetric``,
  recomputed by ORT from the fine-tuned weights);
* every quantized ReLU output (the only activations ORT quantizes in this graph) is rounded to
  uint8 with zero point 0 and a learned scale, which starts at ORT's MinMax on the crops
  ``export.quantize make`` calibrates with and is written into the exported file's metadata
  (``export.quantize.SCALES_KEY``); ``export.quantize`` uses it instead of calibrating;
* each bias is rounded to ORT's int32 grid (input scale x weight scale), and the u8 x s8 products
  are summed as ``--arithmetic`` says (``export.int8_arithmetic``): ``exact`` (the default), as ORT
  sums them with VNNI or AMX and, asked by the service's session entry, on any x86 CPU
  (``restore.core.cpu.session_entries``); ``int16-pairs``, each two neighbouring products
  saturated to int16 first, as a plain ORT session does on AVX2 or AVX-512 without VNNI.
Given the same uint8 input, each simulated layer then computes ORT's uint8 output exactly, on
either path (tests/training/dncnn/test_qat.py: 1e-7 apart at the output of its model, on this
CPU's path and, under qemu, on an AVX2 and a pre-AVX2 CPU); the float first layer and PyTorch's
rounding of its output still flip the odd uint8 step on whole images (0.001 dB on two BSD68 images).

Data: the colour models' training set BSD432 (BSDS500 minus CBSD68, the test set the gate is
measured on), less ``VALIDATION_IMAGES`` images kept aside to watch the simulated int8 PSNR and
choose nothing; gray models: Train400. Noise at the model's sigma (a blind model: uniform in 0-55
per patch). Loss: squared distance to the served float model's output (distillation: the target
differs from the student only by the int8 error, so the gradient carries that error and not the
much larger denoising error of single patches, which with clean targets walked the weights away:
-0.3 dB in float within 25 steps); Adam with a warm-up (these BatchNorm-folded weights jump on
Adam's first full-size steps, see ``training.dncnn.trainer``) and cosine decay. The run is
resumable (``--resume``: weights, scales, optimizer, step).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from export.dncnn import dncnn_from_onnx
from export.int8_arithmetic import ARITHMETICS, Arithmetic, pair_excess
from export.onnx_export import export_onnx
from export.quantize import COMMAND_KEY, SCALES_KEY, calibration_crops
from models.dncnn import DnCNN
from restore.core.manifest import read_manifest
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels
from training.common.checkpoints import save_checkpoint
from training.dncnn.camera_noise import GAUSSIAN_RANGE
from training.dncnn.data import PatchSampler, build_patch_set, load_training_images

__all__ = [
    "QuantSimDnCNN", "activation_maxima", "weight_scale", "fake_quant_weight", "fake_quant_bias", "QATConfig", "fine_tune",
    "write_float_model", "main",
]

#: ORT's symmetric int8 weight range and uint8 activation range (zero point 0 after a ReLU).
WEIGHT_QMAX = 127
ACTIVATION_QMAX = 255
VALIDATION_IMAGES = 8
CHECKPOINT = "qat.pt"


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """ORT's per-output-channel scale of symmetric int8 weights: max |w| / 127 (no gradient)."""
    return weight.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / WEIGHT_QMAX


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded as ORT stores it (per output channel, symmetric int8), straight-through."""
    scale = weight_scale(weight)
    zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


def fake_quant_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``bias`` on ORT's int32 grid (step = input scale x weight scale per channel), straight-through."""
    scale = scale.detach()
    return bias + (torch.round(bias / scale) * scale - bias).detach()


class QuantSimDnCNN(nn.Module):
    """A BatchNorm-folded ``DnCNN`` computed as ONNX Runtime computes its int8 QDQ variant.

    The first and last convolutions stay float (``export.quantize.FLOAT_DEFAULT``), the residual
    subtraction too, and the last ``float_tail_layers`` hidden layers (conv and output; ``--float
    penultimate`` for one); every other hidden activation (each ReLU output, head first) is rounded
    to uint8 with zero point 0 and its own scale. The scales start at ORT's MinMax (``set_scales`` from
    ``activation_maxima``) and are learned with the weights (LSQ, Esser et al., ICLR 2020: the
    gradient trades clipping the rare peaks against rounding the many small values), as
    ``log_scales`` so that one learning rate moves small and large ranges alike. ``export.quantize``
    then writes these scales into the QDQ model instead of calibrating its own.

    Each quantized convolution is ORT's integer one: weights rounded per channel, the bias rounded
    to its int32 grid (``fake_quant_bias``; left float, it alone moved about one output in 2,500 by
    one step), and, with ``arithmetic="int16-pairs"``, each neighbouring pair of u8 x s8
    products saturated to int16 as ORT's AVX2 and AVX-512-without-VNNI kernels do
    (``export.int8_arithmetic``; added as a constant, so the gradient passes straight through as it
    does through the rounding).
    """

    def __init__(self, model: DnCNN, float_tail_layers: int = 0, arithmetic: Arithmetic = "exact") -> None:
        super().__init__()
        if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
            raise ValueError("QuantSimDnCNN needs a BatchNorm-folded DnCNN (batch_norm=False), as exported")
        self.model = model
        self.float_tail_layers = float_tail_layers
        self.arithmetic = arithmetic
        self.log_scales = nn.Parameter(torch.zeros(len(model.body) + 1))

    @property
    def scales(self) -> torch.Tensor:
        return self.log_scales.detach().exp()

    @torch.no_grad()
    def set_scales(self, maxima: torch.Tensor) -> None:
        self.log_scales.copy_((maxima.clamp_min(1e-8) / ACTIVATION_QMAX).log())

    def _round(self, x: torch.Tensor, index: int) -> torch.Tensor:
        scale = self.log_scales[index : index + 1].exp()
        zero = torch.zeros(1, device=x.device)
        grad_factor = 1.0 / math.sqrt(x[0].numel() * ACTIVATION_QMAX)  # LSQ's gradient scale
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, 0, ACTIVATION_QMAX, grad_factor)

    def _conv(self, h: torch.Tensor, conv: nn.Conv2d, index: int) -> torch.Tensor:
        """ORT's QLinearConv of the uint8 activation ``h`` (rounded at ``index - 1``), before its ReLU."""
        w_scale = weight_scale(conv.weight)
        weight = fake_quant_weight(conv.weight)
        scale = self.log_scales[index - 1].detach().exp() * w_scale  # of the int32 accumulator
        bias = None if conv.bias is None else fake_quant_bias(conv.bias, scale)
        y = F.conv2d(h, weight, bias, padding=conv.padding)
        if self.arithmetic == "int16-pairs":
            with torch.no_grad():
                x_q = torch.round(h / self.log_scales[index - 1].exp()).cpu().numpy()
                w_q = torch.round(weight / w_scale[:, None, None, None]).cpu().numpy()
                excess = pair_excess(x_q, w_q, padding=conv.padding[0])
            y = y + torch.from_numpy(excess).to(y) * scale[None, :, None, None]
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._round(self.model.head(x), 0)
        first_float = len(self.model.body) + 1 - self.float_tail_layers
        for index, layer in enumerate(self.model.body, start=1):
            if index >= first_float:
                h = layer(h)
                continue
            h = self._round(F.relu(self._conv(h, layer.conv, index)), index)
        return x - self.model.tail(h)


@torch.no_grad()
def activation_maxima(model: DnCNN, crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Largest value of each ReLU output (head, then body) of the *float* model over ``crops``,
    one crop at a time: what ORT's MinMax calibration finds on the same crops."""
    maxima = torch.zeros(len(model.body) + 1)
    model.eval()
    for crop in crops:
        h = model.head(torch.from_numpy(crop)[None])
        maxima[0] = torch.maximum(maxima[0], h.max())
        for index, layer in enumerate(model.body, start=1):
            h = layer(h)
            maxima[index] = torch.maximum(maxima[index], h.max())
    return maxima


@dataclass(frozen=True)
class QATConfig:
    """The run's settings, stored in its checkpoint (``--resume`` must use the same)."""

    model: str
    steps: int
    batch_size: int
    patch: int
    lr: float
    scale_lr: float
    warmup: int
    check_every: int
    seed: int
    arithmetic: Arithmetic = "exact"  # the u8 x s8 sums simulated (export.int8_arithmetic)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def schedule(self, step: int) -> float:
        """Multiplier of both learning rates: linear warm-up, then cosine to zero at ``steps``."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _split(images: list[tuple[str, np.ndarray]]) -> tuple[list, list]:
    """(training, validation): every ``len // VALIDATION_IMAGES``-th image is kept aside."""
    stride = max(1, len(images) // VALIDATION_IMAGES)
    validation = images[::stride][:VALIDATION_IMAGES]
    kept = {name for name, _ in validation}
    return [item for item in images if item[0] not in kept], validation


@torch.no_grad()
def validate(sim: QuantSimDnCNN, images: Sequence[tuple[str, np.ndarray]], sigma: float | None) -> tuple[float, float]:
    """Mean PSNR (dB) of the float model and of its int8 simulation on ``images`` (256 px centre
    crops, seeded noise at ``sigma``, 25 for a blind model), 8-bit rounded as the evaluation does."""
    level = 25.0 if sigma is None else float(sigma)
    sim.eval()
    scores = {"float": [], "int8": []}
    for index, (_, image) in enumerate(images):
        h, w = image.shape[:2]
        crop = image[max(0, h // 2 - 128): h // 2 + 128, max(0, w // 2 - 128): w // 2 + 128]
        crop = crop[..., None] if crop.ndim == 2 else crop
        clean = crop.astype(np.float64) / 255.0
        noisy = clean + np.random.default_rng([7, index]).standard_normal(clean.shape) * level / 255.0
        x = torch.from_numpy(noisy.transpose(2, 0, 1)[None].astype(np.float32))
        for key, net in (("float", sim.model), ("int8", sim)):
            out = net(x)[0].numpy().transpose(1, 2, 0)
            scores[key].append(psnr(to_pixels(out), crop))
    return float(np.mean(scores["float"])), float(np.mean(scores["int8"]))


def fine_tune(sim: QuantSimDnCNN, patches: np.ndarray, sigma: float | None, cfg: QATConfig, *,
              teacher: nn.Module | None = None, state: dict[str, Any] | None = None, on_check=None, stop: threading.Event | None = None,
              deadline: float | None = None) -> dict[str, Any]:
    """Run steps ``state['step']`` .. ``cfg.steps`` (or until ``stop``/``deadline``) and return the
    resumable state (step, losses, history, optimizer). The target is the float ``teacher``'s output
    (default: a frozen copy of ``sim``'s model as it is now; pass the original when resuming). ``sim``'s scales must be set (``set_scales``)
    or restored first. ``on_check(step, state)`` runs every ``cfg.check_every`` steps and at the end."""
    teacher = copy.deepcopy(sim.model).eval().requires_grad_(False) if teacher is None else teacher
    optimizer = torch.optim.Adam([
        {"params": list(sim.model.parameters()), "lr": cfg.lr, "base": cfg.lr},
        {"params": [sim.log_scales], "lr": cfg.scale_lr, "base": cfg.scale_lr},
    ])
    # batches are a pure function of the seed and the step, so a resumed run draws what an uninterrupted one would
    sampler = PatchSampler(patches, cfg.batch_size, GAUSSIAN_RANGE if sigma is None else (sigma, sigma), cfg.seed)
    state = state or {"step": 0, "history": [], "losses": []}
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    while state["step"] < cfg.steps:
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = group["base"] * cfg.schedule(step)
        clean, noise = sampler.batch(step)
        noisy = clean + noise
        with torch.no_grad():
            target = teacher(noisy)
        sim.train()
        loss = (sim(noisy) - target).square().sum() / (2 * len(noisy))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] = step + 1
        state["losses"].append(float(loss.detach()))
        last = state["step"] == cfg.steps or (stop is not None and stop.is_set()) or (
            deadline is not None and time.monotonic() > deadline)
        if state["step"] % cfg.check_every == 0 or last:
            state["optimizer"] = optimizer.state_dict()
            if on_check is not None:
                on_check(state["step"], state)
        if last:
            break
    return state


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.dncnn.qat", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="../shared/data")
    parser.add_argument("--model", required=True, help="a denoise model of the manifest")
    parser.add_argument("--out", type=Path, required=True, help="writes <model>/qat.pt and <out>/<model>.onnx")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--scale-lr", type=float, default=1e-3, help="learning rate of the log activation scales")
    parser.add_argument("--check-every", type=int, default=50, help="validate and checkpoint every this many steps")
    parser.add_argument("--float-tail-layers", type=int, default=0,
                        help="last hidden layers (conv and output) kept float, as export.quantize --float penultimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arithmetic", choices=ARITHMETICS, default="exact",
                        help="u8 x s8 sums to simulate: exact as served on every CPU, or int16-pairs as a plain "
                             "ONNX Runtime session sums them on AVX2 or AVX-512 without VNNI")
    parser.add_argument("--minutes", type=float, help="stop (resumably) after this long")
    parser.add_argument("--max-patches", type=int, default=40000)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def write_float_model(sim: QuantSimDnCNN, path: Path, channels: int, command: str) -> None:
    """The fine-tuned float network as an ONNX file (float32 weights) carrying its learned activation
    scales in the metadata (``SCALES_KEY``, head first), which ``export.quantize`` writes into the QDQ
    model in place of its own calibration."""
    export_onnx(sim.model, path, (1, channels, 64, 64), fp16_storage=False)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {SCALES_KEY: json.dumps([float(v) for v in sim.scales]), COMMAND_KEY: command})
    onnx.save(proto, str(path))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    entry = next((e for e in read_manifest(args.manifest) if e["name"] == args.model and e["task"] == "denoise"), None)
    if entry is None:
        raise SystemExit(f"{args.model}: not a denoise model of {args.manifest}")
    channels, sigma = int(entry["channels"]), entry["sigma"]
    cfg = QATConfig(args.model, args.steps, args.batch_size, args.patch, args.lr, args.scale_lr, args.warmup,
                    args.check_every, args.seed, args.arithmetic)
    run_dir = args.out / args.model
    run_dir.mkdir(parents=True, exist_ok=True)
    served = dncnn_from_onnx(onnx.load(str(args.manifest.parent / entry["file"]))).float()
    teacher = copy.deepcopy(served).eval().requires_grad_(False)
    sim = QuantSimDnCNN(served, args.float_tail_layers, args.arithmetic)
    images = load_training_images("BSD432" if channels == 3 else "Train400", args.data, channels)
    training, validation = _split(images)
    patches = build_patch_set(training, args.patch, args.patch, (1.0,), seed=args.seed, max_patches=args.max_patches)
    print(f"{args.model}: {len(patches)} patches of {args.patch}px from {len(training)} images, "
          f"{len(validation)} kept aside; sigma {sigma}; {args.arithmetic} u8 x s8 sums simulated", flush=True)
    state = None
    if args.resume:
        saved = torch.load(run_dir / CHECKPOINT, weights_only=False)
        saved["config"].setdefault("arithmetic", "exact")  # runs before the setting simulated exact sums
        if saved["config"] != cfg.as_dict():
            raise SystemExit(f"--resume with other settings: {saved['config']} vs {cfg.as_dict()}")
        sim.load_state_dict(saved["sim"])
        state = saved["state"]
    else:
        # ORT's MinMax on the crops `export.quantize make` calibrates with: where int8 starts from
        sim.set_scales(activation_maxima(sim.model, calibration_crops(args.data, channels, sigma)))
        float_db, int8_db = validate(sim, validation, sigma)
        print(f"start: validation float {float_db:.3f} dB, int8 simulated {int8_db:.3f} dB", flush=True)
    command = "python -m training.dncnn.qat " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    started = time.monotonic()

    def check(step: int, current: dict[str, Any]) -> None:
        f_db, q_db = validate(sim, validation, sigma)
        loss = float(np.mean(current["losses"][-cfg.check_every:]))
        current["history"].append({"step": step, "loss": loss, "float_db": f_db, "int8_db": q_db})
        print(f"step {step}: loss {loss:.3f}, validation float {f_db:.3f} dB, int8 simulated {q_db:.3f} dB, "
              f"{time.monotonic() - started:.0f} s", flush=True)
        save_checkpoint(run_dir / CHECKPOINT, {"config": cfg.as_dict(), "sim": sim.state_dict(), "state": current,
                                               "command": command})

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = started + args.minutes * 60 if args.minutes else None
    state = fine_tune(sim, patches, sigma, cfg, teacher=teacher, state=state, on_check=check, stop=stop, deadline=deadline)
    if state["step"] < cfg.steps:
        print(f"stopped at step {state['step']} of {cfg.steps}: --resume continues", flush=True)
        return 0
    target = args.out / f"{args.model}.onnx"
    write_float_model(sim, target, channels, command)
    print(f"wrote {target}: quantize it with export.quantize make --float-from {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
