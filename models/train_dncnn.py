"""Train DnCNN (gray DnCNN-S/-B, colour CDnCNN-B) with the paper's recipe, seeded and resumable.

Usage::

    python -m models.train_dncnn --variant dncnn-s --sigma 25 --data ../shared/data \\
        --out runs/dncnn-s25 [--iterations N] [--milestones M ...] [--epoch-iters K] \\
        [--batch-size 128] [--device cpu|cuda] [--amp] [--max-minutes T] [--resume]

Recipe (Zhang et al. 2017, Sec. III-IV; the authors' MatConvNet ``Demo_Train_model_*_Adam.m`` and
PyTorch ``main_train.py``), and the choices made where the sources differ:

* model: ``models.dncnn`` with BatchNorm (17 layers for DnCNN-S, 20 for -B/CDnCNN-B), residual
  learning (the network predicts the noise); initialisation of the authors' ``DnCNN_init.m``
  (He-normal convolutions, the paper's [34]; small random BatchNorm scales, see ``init_weights``);
* data (``models.dncnn_data``): Train400 (gray) or BSD432 (colour); scales 1/0.9/0.8/0.7, stride
  10, one of 8 flip/rotation modes per patch; 40x40 patches for DnCNN-S (238,400 patches), 50x50
  and 128 x 3000 patches for the blind models; Gaussian noise drawn per batch, sigma fixed
  (DnCNN-S) or uniform per patch in [0, 55] (blind);
* loss: the paper's ``1/(2N) sum_i ||R(y_i) - (y_i - x_i)||^2`` over a batch of N patches;
* optimiser: Adam (betas 0.9/0.999, no weight decay), batch 128, lr 1e-3 then 1e-4 from 60% of
  training (the MatConvNet code: 30 of 50 epochs; the paper's SGD alternative decays 1e-1 to 1e-4,
  KAIR starts Adam at 1e-4). ``--milestones`` and ``--lr-decay`` change it;
* an *epoch* is ``--epoch-iters`` iterations (default: one pass over the patch set, 1862 batches of
  128 for Train400). At each epoch end: Set12 PSNR at the training sigma (25 for the blind models;
  CBSD68 for colour, which is also its test set: treat its best checkpoint as optimistic),
  checkpoints ``last.pt`` / ``best.pt`` and the CSV log ``log.csv``;
* determinism: model init from ``--seed``; batch ``i`` is a pure function of ``(seed, i)``; the
  learning rate a pure function of ``i``. ``--resume`` continues ``out/last.pt`` and reproduces the
  uninterrupted run (same losses) on the same machine and thread count;
* precision: fp32 by default; ``--amp`` is bfloat16 autocast on CPU, float16 autocast with a
  GradScaler on CUDA. Validation always runs in float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from models.dncnn import DnCNN, DnCNNConfig, dncnn_config
from models.dncnn_data import PatchSampler, build_patch_set, load_training_images
from models.eval_denoise import add_noise, load_set, noise_rng, psnr, quantize
from models.train_log import CSV_NAME, Progress, machine_description, write_csv

__all__ = [
    "TrainConfig", "VARIANTS", "Trainer", "init_weights", "learning_rate", "validate",
    "save_checkpoint", "load_checkpoint", "config_from_dict", "main",
]

CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"
BN_SCALE_MIN = 0.025  # DnCNN_init.m: b_min
PAPER_PASSES, PAPER_DECAY_PASS = 50, 30  # MatConvNet code: 50 epochs, lr / 10 after 30


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (resolved: no ``None`` left by ``resolve``)."""

    arch: str = "dncnn-s"  # key of models.dncnn.DNCNN_CONFIGS
    depth: int | None = None  # overrides of the arch (tests, experiments)
    features: int | None = None
    train_set: str = "Train400"
    val_set: str = "Set12"
    sigma_range: tuple[float, float] = (25.0, 25.0)
    val_sigma: int = 25
    patch_size: int = 40
    stride: int = 10
    scales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7)
    max_patches: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 0.1
    iterations: int | None = None  # default PAPER_PASSES passes over the patch set
    milestones: tuple[int, ...] | None = None  # default: 60% of the iterations
    epoch_iters: int | None = None  # default: one pass over the patch set
    seed: int = 0
    amp: bool = False
    channels_last: bool = True
    device: str = "cpu"

    def model_config(self) -> DnCNNConfig:
        """The architecture: ``arch``'s config with the ``depth`` / ``features`` overrides."""
        base = dncnn_config(self.arch)
        return dataclasses.replace(
            base, depth=self.depth or base.depth, features=self.features or base.features
        )

    def resolve(self, batches_per_pass: int) -> TrainConfig:
        """Fill the schedule defaults from the size of the patch set."""
        iterations = self.iterations or PAPER_PASSES * batches_per_pass
        milestones = self.milestones
        if milestones is None:
            milestones = (iterations * PAPER_DECAY_PASS // PAPER_PASSES,)
        epoch_iters = self.epoch_iters or min(batches_per_pass, iterations)
        return dataclasses.replace(
            self, iterations=iterations, milestones=tuple(milestones), epoch_iters=epoch_iters
        )


VARIANTS: dict[str, TrainConfig] = {
    "dncnn-s": TrainConfig(),
    "dncnn-b": TrainConfig(
        arch="dncnn-b", sigma_range=(0.0, 55.0), patch_size=50, max_patches=128 * 3000
    ),
    "cdncnn-b": TrainConfig(
        arch="cdncnn-b", train_set="BSD432", val_set="CBSD68", sigma_range=(0.0, 55.0),
        patch_size=50, max_patches=128 * 3000,
    ),
}
# May differ between a checkpoint and the command that resumes it.
RESUME_OVERRIDES = frozenset({"iterations", "milestones", "device"})


def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """The authors' ``DnCNN_init.m``: He-normal convolutions (fan-in, ReLU gain), zero biases,
    BatchNorm scales ``N(0, 2 / (9 * C))`` with magnitudes raised to at least ``BN_SCALE_MIN``
    (their ``clipping``) and zero shifts.

    The small BatchNorm scales make the initial noise estimate small, so training starts near
    ``output = input`` instead of a huge loss (with scales of 1 the first ~100 Adam steps of a
    CPU run were spent undoing the initial output, at 20.5 dB on Set12 after 100 iterations).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu",
                                    generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                std = (2.0 / (9 * module.num_features)) ** 0.5
                scale = torch.randn(module.num_features, generator=generator) * std
                sign = torch.where(scale < 0, -1.0, 1.0)
                module.weight.copy_(sign * scale.abs().clamp(min=BN_SCALE_MIN))
            nn.init.zeros_(module.bias)


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Step schedule: ``lr * lr_decay ** (milestones passed)``."""
    passed = sum(iteration >= m for m in config.milestones or ())
    return config.lr * config.lr_decay**passed


@torch.inference_mode()
def validate(
    model: DnCNN, images: Sequence[tuple[str, np.ndarray]], set_name: str, sigma: int,
    device: torch.device, channels_last: bool = False,
) -> float:
    """Mean PSNR in float32 with ``models.eval_denoise``'s noise, clipping and rounding."""
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    scores = []
    for name, clean in images:
        noisy = add_noise(clean, sigma, noise_rng(set_name, name, sigma))
        chw = noisy[None] if noisy.ndim == 2 else noisy.transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(chw))[None].to(device, memory_format=fmt)
        y = model(x)[0].float().cpu().numpy()
        out = y[0] if noisy.ndim == 2 else y.transpose(1, 2, 0)
        scores.append(psnr(quantize(out), clean))
    return float(np.mean(scores))


class Trainer:
    """Model, optimiser and data stream of one run; ``iteration`` counts finished steps."""

    def __init__(self, config: TrainConfig, patches: np.ndarray) -> None:
        device = torch.device(config.device)
        sampler = PatchSampler(patches, config.batch_size, config.sigma_range, config.seed)
        self.config = config.resolve(sampler.batches_per_pass)
        self.sampler = sampler
        self.device = device
        self.format = torch.channels_last if config.channels_last else torch.contiguous_format
        torch.manual_seed(config.seed)
        model = DnCNN(**dataclasses.asdict(self.config.model_config()))
        init_weights(model)
        self.model = model.to(device, memory_format=self.format)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.autocast_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=config.amp and device.type == "cuda"
        )
        self.iteration = 0

    def train_step(self) -> float:
        """One Adam step on batch ``iteration``; returns the batch loss (paper's scaling)."""
        clean, noise = self.sampler.batch(self.iteration)
        clean = clean.to(self.device, memory_format=self.format, non_blocking=True)
        noise = noise.to(self.device, memory_format=self.format, non_blocking=True)
        noisy = clean + noise
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.iteration)
        self.model.train()
        with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.config.amp):
            residual = noisy - self.model(noisy)  # R(y): the network's estimate of the noise
        loss = (residual.float() - noise).square().sum() / (2 * len(clean))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": _config_to_dict(self.config),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = config_from_dict(state["config"])
        differ = [
            f.name for f in dataclasses.fields(TrainConfig)
            if f.name not in RESUME_OVERRIDES
            and getattr(saved, f.name) != getattr(self.config, f.name)
        ]
        if differ:
            raise ValueError(f"checkpoint was trained with other settings: {differ}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])


def _config_to_dict(config: TrainConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Inverse of the ``config`` stored in a checkpoint (lists back to tuples)."""
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never leaves a broken ``last.pt``."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as saved by ``run`` (tensors and plain data only)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def run(trainer: Trainer, val_images: Sequence[tuple[str, np.ndarray]], out: Path,
        meta: dict[str, Any], max_minutes: float | None = None,
        stop: threading.Event | None = None) -> dict[str, Any]:
    """Train to ``config.iterations``, validating and saving every epoch.

    ``max_minutes`` or a set ``stop`` event end the run early, after the current step, with a
    last validation and checkpoint (``--resume`` continues from there). ``meta`` carries what is
    kept across resumes: history, best PSNR, elapsed seconds, command.
    """
    cfg = trainer.config
    assert cfg.iterations is not None and cfg.epoch_iters is not None
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(cfg.iterations, trainer.iteration)
    start, elapsed0 = time.monotonic(), float(meta.get("elapsed_s", 0.0))
    epoch_start, epoch_first = time.monotonic(), trainer.iteration
    deadline = start + max_minutes * 60 if max_minutes else None
    while trainer.iteration < cfg.iterations:
        lr = learning_rate(cfg, trainer.iteration)
        loss = trainer.train_step()
        meta["elapsed_s"] = elapsed0 + time.monotonic() - start
        meta["loss_sum"] = meta.get("loss_sum", 0.0) + loss
        meta["loss_count"] = meta.get("loss_count", 0) + 1
        progress.update(trainer.iteration, loss, lr)
        timed_out = deadline is not None and time.monotonic() >= deadline
        timed_out = timed_out or (stop is not None and stop.is_set())
        epoch_end = trainer.iteration % cfg.epoch_iters == 0 or trainer.iteration == cfg.iterations
        if not (epoch_end or timed_out):
            continue
        val_start = time.monotonic()
        train_seconds = val_start - epoch_start
        psnr_value = validate(trainer.model, val_images, cfg.val_set, cfg.val_sigma,
                              trainer.device, cfg.channels_last)
        meta["elapsed_s"] = elapsed0 + time.monotonic() - start
        row = {
            "epoch": len(meta.setdefault("history", [])) + 1,
            "iteration": trainer.iteration,
            "patches": trainer.iteration * cfg.batch_size,
            "lr": lr,
            "train_loss": meta.pop("loss_sum") / meta.pop("loss_count"),
            "val_psnr": round(psnr_value, 4),
            "elapsed_s": round(meta["elapsed_s"], 1),
            "iters_per_s": round((trainer.iteration - epoch_first) / train_seconds, 4),
        }
        meta["history"].append(row)
        progress.message(f"epoch {row['epoch']}: iteration {row['iteration']}, "
                         f"{cfg.val_set} PSNR {psnr_value:.3f} dB, loss {row['train_loss']:.4f}, "
                         f"{row['iters_per_s']:.3f} it/s, validation "
                         f"{time.monotonic() - val_start:.0f} s")
        state = {**trainer.state_dict(), **meta}
        if psnr_value > meta.get("best_psnr", float("-inf")):
            meta.update(best_psnr=psnr_value, best_iteration=trainer.iteration)
            state.update(best_psnr=psnr_value, best_iteration=trainer.iteration)
            save_checkpoint(out / CHECKPOINT_BEST, state)
        save_checkpoint(out / CHECKPOINT_LAST, state)
        write_csv(out / CSV_NAME, meta["history"])
        epoch_start, epoch_first = time.monotonic(), trainer.iteration
        if timed_out:
            progress.message(f"stopped early at iteration {trainer.iteration}")
            break
    return meta


def benchmark(trainer: Trainer, steps: int) -> int:
    """Print the training speed of this configuration (the steps are not saved)."""
    for _ in range(2):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    rate = steps / (time.perf_counter() - start)
    cfg = trainer.config
    print(f"batch {cfg.batch_size}, amp {cfg.amp}, channels_last {cfg.channels_last}, "
          f"{cfg.device}: {rate:.4f} it/s, {rate * cfg.batch_size:.1f} patches/s", flush=True)
    return 0


META_KEYS = ("history", "best_psnr", "best_iteration", "elapsed_s", "loss_sum", "loss_count",
             "command", "machine")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.train_dncnn", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="dncnn-s")
    parser.add_argument("--sigma", type=float, help="fixed training noise level (DnCNN-S)")
    parser.add_argument("--sigma-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--data", type=Path, required=True,
                        help="folder holding denoise/ (Train400, Set12, CBSD68) and bsds500/")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    parser.add_argument("--max-minutes", type=float, help="stop (validated, saved) after this")
    parser.add_argument("--val-limit", type=int, help="first N validation images (smoke tests)")
    parser.add_argument("--benchmark", type=int, metavar="N",
                        help="only time N training steps (after 2 warm-up steps) and exit")
    for field in ("batch_size", "iterations", "epoch_iters", "patch_size", "stride",
                  "max_patches", "seed", "depth", "features", "val_sigma"):
        parser.add_argument("--" + field.replace("_", "-"), type=int)
    parser.add_argument("--scales", type=float, nargs="+", help="patch extraction scales")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-decay", type=float)
    parser.add_argument("--milestones", type=int, nargs="*", help="iterations where lr decays")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision: bfloat16 on CPU, float16 + GradScaler on CUDA")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The variant's preset with the options given on the command line."""
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if args.sigma is not None:
        overrides["sigma_range"] = (args.sigma, args.sigma)
        overrides.setdefault("val_sigma", round(args.sigma))
    if args.sigma_range is not None:
        overrides["sigma_range"] = tuple(args.sigma_range)
    for key in ("milestones", "scales"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return dataclasses.replace(VARIANTS[args.variant], **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    config = config_from_args(args)
    channels = config.model_config().channels
    images = load_training_images(config.train_set, args.data, channels)
    patches = build_patch_set(images, config.patch_size, config.stride, config.scales,
                              seed=config.seed, max_patches=config.max_patches)
    val_images = load_set(args.data / "denoise" / config.val_set, channels, args.val_limit)
    trainer = Trainer(config, patches)
    if args.benchmark:
        return benchmark(trainer, args.benchmark)
    command = shlex.join(["python", "-m", "models.train_dncnn", *(argv or sys.argv[1:])])
    meta: dict[str, Any] = {"command": command, "machine": machine_description(trainer.device)}
    if args.resume:
        state = load_checkpoint(args.out / CHECKPOINT_LAST)
        trainer.load_state_dict(state)
        meta.update({k: state[k] for k in META_KEYS if k in state and k != "machine"})
        meta["command"] = f"{meta['command']} && {command}"  # the whole history of the run
    print(f"{len(images)} {config.train_set} images -> {len(patches)} patches "
          f"{tuple(patches.shape[1:])}; {trainer.config.iterations} iterations of "
          f"{config.batch_size}, epoch = {trainer.config.epoch_iters} iterations, "
          f"lr {config.lr:g} x{config.lr_decay:g} at {trainer.config.milestones}; "
          f"{meta['machine']}", flush=True)
    stop = threading.Event()  # SIGINT/SIGTERM: finish the step, validate, save, exit
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        meta = run(trainer, val_images, args.out, meta, args.max_minutes, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"best {config.val_set} PSNR {meta.get('best_psnr', float('nan')):.3f} dB at iteration "
          f"{meta.get('best_iteration')}; {meta['elapsed_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
