"""Train DnCNN (gray DnCNN-S/-B, colour CDnCNN-B) with the paper's recipe, seeded and resumable.

Usage::

    python -m training.dncnn.train --variant dncnn-s --sigma 25 --data ../shared/data \\
        --out runs/dncnn-s25 [--iterations N] [--milestones M ...] [--epoch-iters K] \\
        [--batch-size 128] [--device cpu|cuda] [--amp] [--max-minutes T] [--resume]
    python -m training.dncnn.train --variant cdncnn-b-camera --init models/onnx/dncnn-color-blind.onnx ...

The recipe, and the choices made where the paper and the authors' code differ, are in
``training.dncnn.trainer``; this module is the command: the epoch loop (validation, checkpoints,
CSV log, early stop on a deadline or a signal), the speed benchmark and the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from training.common.log import CSV_NAME, Progress, machine_description, write_csv
from training.dncnn.camera_noise import DESCRIPTION as CAMERA_DESCRIPTION
from training.dncnn.data import NOISE_MODELS, build_patch_set, load_training_images
from training.dncnn.images import load_set
from training.dncnn.trainer import VARIANTS, TrainConfig, Trainer, learning_rate, load_checkpoint, save_checkpoint, validate

__all__ = ["run", "benchmark", "config_from_args", "main"]

CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"


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
                              trainer.device, cfg.channels_last, camera=cfg.noise == "camera")
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
             "command", "machine", "noise_description")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.dncnn.train", description=__doc__.split("\n")[0]
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
                  "max_patches", "seed", "depth", "features", "val_sigma", "warmup"):
        parser.add_argument("--" + field.replace("_", "-"), type=int)
    parser.add_argument("--scales", type=float, nargs="+", help="patch extraction scales")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-decay", type=float)
    parser.add_argument("--milestones", type=int, nargs="*", help="iterations where lr decays")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision: bfloat16 on CPU, float16 + GradScaler on CUDA")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--noise", choices=NOISE_MODELS,
                        help="gaussian (the paper) or camera (training.dncnn.camera_noise)")
    parser.add_argument("--gaussian-share", type=float, help="camera noise: share of plain Gaussian patches")
    parser.add_argument("--init", help="start from this exported DnCNN (.onnx); implies --no-batch-norm")
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
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
    if args.init is not None:
        if args.batch_norm:
            raise SystemExit("--init loads a released (BatchNorm-folded) model: drop --batch-norm")
        overrides["batch_norm"] = False
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
    command = shlex.join(["python", "-m", "training.dncnn.train", *(argv or sys.argv[1:])])
    meta: dict[str, Any] = {"command": command, "machine": machine_description(trainer.device)}
    if config.noise == "camera":
        meta["noise_description"] = CAMERA_DESCRIPTION
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
