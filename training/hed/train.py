"""Fine-tune HED on BSDS500 train+val (Xie & Tu, "Holistically-Nested Edge Detection", ICCV 2015).

Usage::

    python -m training.hed.train --data ../shared/data/bsds500 --init models/onnx/hed-bsds500.onnx \\
        --out runs/hed-ft [--iterations 10000] [--batch-size 8] [--patch 320] [--lr 1e-5] \\
        [--device cpu|cuda] [--amp] [--channels-last] [--max-minutes T] [--compact DIR] [--resume]
    python -m training.hed.train --data ../shared/data/bsds500 --out runs/hed-ft --benchmark 5 [--amp] [--channels-last]

Recipe, and where it departs from the paper:

* loss: the paper's class-balanced sigmoid cross-entropy (Eq. 2), ``beta = |Y-| / |Y|`` weighting
  the edge pixels and ``1 - beta`` the others, on each of the five side outputs and on the fused
  output, summed (Eq. 3 and 4, all weights 1); per pixel mean instead of the Caffe sum, so the
  learning rate does not depend on the crop size;
* labels: the mean of the image's human annotations; a pixel is an edge where at least
  ``--eta`` (0.5) of the annotators marked it and is left out of the loss where some but fewer
  did (the consensus rule of RCF, Liu et al. 2017; the paper's HED-BSDS release uses the same
  idea);
* augmentation: random 320x320 crops, flips and rotations by multiples of 90 degrees (the paper:
  16 rotations, flips and 3 scales, precomputed); a batch is a pure function of ``(seed, i)``;
* initialisation: the served weights (the ONNX file's own initializers, ``export.hed``), so this
  fine-tunes what ``POST /edges`` serves; Adam instead of the paper's SGD (lr 1e-6, sum loss);
* precision and layout: ``--amp`` runs the forward pass under bfloat16 autocast (CPUs with
  avx512_bf16, CUDA GPUs from sm_80), the loss in float32; ``--channels-last`` stores activations
  NHWC. ``--benchmark N`` times N steps (after one warm-up step) on the first 8 training images and
  exits: the issue gates CPU fine-tuning on a step of 8 crops of 320x320 under 4 s;
* validation: ODS on the last ``--val-count`` BSDS500 *val* images (held out of training; the
  test split stays unseen), ``training.hed.evaluate`` matching with ``--val-thresholds`` thresholds.

Checkpoints: ``--out``/``last.pt`` holds everything (float32 weights, Adam's state: 176 MB, not
for git); ``--compact DIR`` also writes ``DIR/compact.pt`` (59 MB), the form committed between
sessions: the weights as their bfloat16 difference from ``--init`` (whose float16-stored values
are exact in float32, so only the fine-tune's change is rounded, to 3 significant digits) and
Adam's second moment in bfloat16; its first moment is left out, since with ``beta1 = 0.9`` it
forgets within ~20 steps and restarts from zero at a resume (Adam's step count is kept, so those
steps are only shorter, never larger). ``training.common.checkpoints.compact_checkpoint``'s plain bfloat16
copy (weights and both moments) would be 88 MB, over the 60 MB issue 18 allows. ``--resume``
takes ``last.pt`` where it exists, else the compact file.

A fine-tuned checkpoint (``model`` = ``models.hed.HED`` state dict) goes out through
``export.onnx_export.export_onnx(HEDForInference(model), ...)``, the path ``export.hed`` uses for
the imported weights, and is measured with ``training.hed.evaluate`` the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from export.hed import hed_from_onnx
from models.hed import HED, HEDForInference
from restore.core.edgemaps import nms
from restore.core.hashing import sha256_file
from training.common.checkpoints import check_resumable, save_checkpoint
from training.common.log import Progress, machine_description, write_csv
from training.hed.bsds import MAX_DIST, GroundTruth, evaluate_image, image_ids, load_boundaries, load_image, summarize, thresholds_for

__all__ = [
    "HEDTrainConfig", "EdgeSamples", "balanced_bce", "HEDTrainer", "validate", "main",
    "compact_state", "load_compact_state",
]

CHECKPOINT = "last.pt"
COMPACT = "compact.pt"
LOG = "log.csv"


@dataclass(frozen=True)
class HEDTrainConfig:
    patch: int = 320
    batch_size: int = 8
    iterations: int = 10000
    lr: float = 1e-5
    eta: float = 0.5
    side_weight: float = 1.0  # weight of the five side outputs' losses (the paper: 1; 0 trains the fused output only)
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bfloat16 autocast of the forward pass
    channels_last: bool = False


def balanced_bce(logits: torch.Tensor, label: torch.Tensor, eta: float, side_weight: float = 1.0) -> torch.Tensor:
    """Class-balanced sigmoid cross-entropy of every output channel, summed over channels, the
    side outputs' (channels 1-5) times ``side_weight``.

    ``logits``: (N, K, H, W); ``label``: (N, 1, H, W) annotator consensus in [0, 1]. Per image,
    edges (``label >= eta``) weigh ``beta = |Y-| / |Y|`` and non-edges (``label == 0``) ``1 -
    beta``; pixels in between are ignored.
    """
    edge = label >= eta
    plain = label == 0
    n_edge = edge.sum(dim=(1, 2, 3), keepdim=True).float()
    n_plain = plain.sum(dim=(1, 2, 3), keepdim=True).float()
    beta = n_plain / (n_edge + n_plain).clamp(min=1)
    weight = torch.where(edge, beta, torch.where(plain, 1 - beta, torch.zeros_like(beta)))
    target = edge.float().expand_as(logits)
    loss = F.binary_cross_entropy_with_logits(
        logits, target, weight=weight.expand_as(logits), reduction="none"
    )
    per_output = loss.mean(dim=(0, 2, 3))
    return per_output[0] + side_weight * per_output[1:].sum()


class EdgeSamples:
    """(image, consensus label) crops as a pure function of ``(seed, index)``."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], patch: int, seed: int) -> None:
        if len(images) != len(labels) or not images:
            raise ValueError("need as many labels as images, and at least one")
        self.images, self.labels, self.patch, self.seed = images, labels, patch, seed

    def batch(self, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 3, P, P)`` RGB in [0, 1] and ``(N, 1, P, P)`` labels."""
        rng = np.random.default_rng([self.seed, index])
        xs, ys = [], []
        for _ in range(size):
            k = int(rng.integers(len(self.images)))
            image, label = self.images[k], self.labels[k]
            turns = int(rng.integers(4))
            image, label = np.rot90(image, turns), np.rot90(label, turns)
            if rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
            h, w = label.shape
            pad_h, pad_w = max(0, self.patch - h), max(0, self.patch - w)
            if pad_h or pad_w:
                image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
                label = np.pad(label, ((0, pad_h), (0, pad_w)), mode="reflect")
            top = int(rng.integers(label.shape[0] - self.patch + 1))
            left = int(rng.integers(label.shape[1] - self.patch + 1))
            window = (slice(top, top + self.patch), slice(left, left + self.patch))
            xs.append(image[window].transpose(2, 0, 1))
            ys.append(label[window][None])
        return np.ascontiguousarray(np.stack(xs), np.float32), np.ascontiguousarray(np.stack(ys), np.float32)


class HEDTrainer:
    def __init__(self, config: HEDTrainConfig, model: HED, data: EdgeSamples) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.format)
        self.data = data
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.iteration = 0

    def step(self) -> float:
        images, labels = self.data.batch(self.iteration, self.config.batch_size)
        x = HEDForInference.preprocess(torch.from_numpy(images).to(self.device))
        x = x.contiguous(memory_format=self.format)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
            logits = self.model(x)
        loss = balanced_bce(logits.float(), torch.from_numpy(labels).to(self.device), self.config.eta,
                            self.config.side_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "iteration": self.iteration,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "widths": self.model.widths, "depths": self.model.depths}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])


def compact_state(trainer: HEDTrainer, init: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The trainer's state in the compact form committed between sessions (module docstring):
    weights as their bfloat16 difference from ``init``, Adam's second moment in bfloat16."""
    state = {"config": dataclasses.asdict(trainer.config), "iteration": trainer.iteration,
             "widths": trainer.model.widths, "depths": trainer.model.depths, "delta": {}, "exp_avg_sq": {}}
    for name, parameter in trainer.model.named_parameters():
        state["delta"][name] = (parameter.detach().float() - init[name]).to(torch.bfloat16).contiguous()
        moments = trainer.optimizer.state.get(parameter)
        if moments:
            state["exp_avg_sq"][name] = moments["exp_avg_sq"].to(torch.bfloat16).contiguous()
    return state


def load_compact_state(trainer: HEDTrainer, state: dict[str, Any], init: dict[str, torch.Tensor]) -> None:
    """Resume ``trainer`` (built on the same ``init``) from ``compact_state``'s output."""
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            parameter.copy_(init[name] + state["delta"][name].float())
            if name in state["exp_avg_sq"]:
                trainer.optimizer.state[parameter] = {
                    "step": torch.tensor(float(state["iteration"])),
                    "exp_avg": torch.zeros_like(parameter),
                    "exp_avg_sq": state["exp_avg_sq"][name].float().to(parameter.device),
                }
    trainer.iteration = int(state["iteration"])


@torch.no_grad()
def validate(
    model: HED, samples: Sequence[tuple[np.ndarray, list[np.ndarray]]], thresholds: np.ndarray
) -> float:
    """ODS of the fused output on ``samples`` (uint8 RGB, boundaries), standard matching."""
    model.eval()
    device = next(model.parameters()).device
    counts = []
    for rgb, boundaries in samples:
        x = torch.from_numpy(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255).to(device)
        prob = torch.sigmoid(model(HEDForInference.preprocess(x)))[0, 0].cpu().numpy()
        diagonal = float(np.hypot(*boundaries[0].shape))
        truths = [GroundTruth(b, MAX_DIST * diagonal) for b in boundaries]
        counts.append(evaluate_image(nms(prob), truths, thresholds))
    return summarize(np.stack(counts), thresholds).ods


def _load(data: Path, split: str, ids: Sequence[str]) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    return ([load_image(data, split, i) for i in ids], [load_boundaries(data, split, i) for i in ids])


def _samples(data: Path, images: Sequence[tuple[str, str]], patch: int, seed: int) -> EdgeSamples:
    """Crops of ``(split, id)`` images in [0, 1] with their annotators' consensus (the mean label)."""
    return EdgeSamples(
        [load_image(data, split, i).astype(np.float32) / 255 for split, i in images],
        [np.mean(load_boundaries(data, split, i), axis=0, dtype=np.float32) for split, i in images], patch, seed,
    )


def _served_hed(init: Path) -> HED:
    """The network of the ONNX file ``init`` (its own initializers), to fine-tune."""
    return hed_from_onnx(onnx.load(str(init))).hed


def benchmark(data: Path, config: HEDTrainConfig, init: Path, steps: int) -> int:
    """Seconds per training step (the median of ``steps`` after one warm-up), printed as one line."""
    samples = _samples(data, [("train", i) for i in image_ids(data, "train", 8)], config.patch, 0)
    trainer = HEDTrainer(config, _served_hed(init), samples)
    trainer.step()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.step()
        seconds.append(time.perf_counter() - started)
    print(f"HED training step, batch {config.batch_size} x {config.patch}x{config.patch}, amp {config.amp}, "
          f"channels_last {config.channels_last}, {torch.get_num_threads()} threads: "
          f"median {np.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}) over {steps} steps; "
          f"{machine_description(trainer.device)}", flush=True)
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.hed.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="BSDS500 folder")
    parser.add_argument("--init", type=Path, default=Path("models/onnx/hed-bsds500.onnx"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="from --out's last.pt, else from --compact's file")
    parser.add_argument("--compact", type=Path, metavar="DIR",
                        help="also write the compact checkpoint (59 MB, the one to commit) here at every checkpoint")
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--val-count", type=int, default=10)
    parser.add_argument("--val-thresholds", type=int, default=33)
    parser.add_argument("--benchmark", type=int, metavar="N", help="time N training steps and exit")
    for field in dataclasses.fields(HEDTrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if str(field.type) == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type={"int": int, "float": float, "str": str}[str(field.type)])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    config = dataclasses.replace(HEDTrainConfig(), **{
        f.name: getattr(args, f.name) for f in dataclasses.fields(HEDTrainConfig)
        if getattr(args, f.name) is not None
    })
    if args.benchmark:
        return benchmark(args.data, config, args.init, args.benchmark)
    val_ids = image_ids(args.data, "val", None)[-args.val_count:]
    train: list[tuple[str, str]] = [("train", i) for i in image_ids(args.data, "train", None)]
    train += [("val", i) for i in image_ids(args.data, "val", None)[: -args.val_count]]
    samples = _samples(args.data, train, config.patch, config.seed)
    val_images, val_truths = _load(args.data, "val", val_ids)
    val = list(zip(val_images, val_truths))
    thresholds = thresholds_for(args.val_thresholds)
    model = _served_hed(args.init)
    init = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = HEDTrainer(config, model, samples)
    meta: dict[str, Any] = {"history": [], "elapsed_s": 0.0,
                            "command": shlex.join(["python", "-m", "training.hed.train", *(argv or sys.argv[1:])]),
                            "machine": machine_description(trainer.device), "init_sha256": sha256_file(args.init)}
    if args.resume:
        full = args.out / CHECKPOINT
        if not full.is_file() and args.compact is None:
            raise SystemExit(f"--resume: no {full} and no --compact folder")
        state = torch.load(full if full.is_file() else args.compact / COMPACT, map_location="cpu", weights_only=False)
        if state.get("init_sha256", meta["init_sha256"]) != meta["init_sha256"]:
            raise SystemExit(f"--resume: the checkpoint fine-tunes another --init ({state['init_sha256'][:12]}...)")
        check_resumable(HEDTrainConfig(**state["config"]), config, frozenset({"iterations", "device"}))
        if full.is_file():
            trainer.load_state_dict(state)
        else:
            load_compact_state(trainer, state, init)
        meta.update({k: state[k] for k in ("history", "elapsed_s", "command") if k in state})
    else:
        meta["history"].append({"iteration": 0, "loss": float("nan"), "val_ods": validate(model, val, thresholds),
                                "elapsed_s": 0.0})
    print(f"HED fine-tuning: {len(samples.images)} training images, {len(val)} held-out val images; "
          f"{config}; {meta['machine']}; val ODS at start {meta['history'][0]['val_ods']:.4f}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    args.out.mkdir(parents=True, exist_ok=True)
    progress = Progress(config.iterations, start=trainer.iteration)
    started, elapsed0 = time.monotonic(), float(meta["elapsed_s"])
    losses: list[float] = []

    def checkpoint() -> None:
        meta["elapsed_s"] = round(elapsed0 + time.monotonic() - started, 1)
        meta["history"].append({"iteration": trainer.iteration, "loss": round(float(np.mean(losses)), 6),
                                "val_ods": round(validate(trainer.model, val, thresholds), 4),
                                "elapsed_s": meta["elapsed_s"]})
        save_checkpoint(args.out / CHECKPOINT, {**trainer.state_dict(), **meta})
        if args.compact is not None:
            args.compact.mkdir(parents=True, exist_ok=True)
            save_checkpoint(args.compact / COMPACT, {**compact_state(trainer, init), **meta})
            write_csv(args.compact / LOG, meta["history"], ("iteration", "loss", "val_ods", "elapsed_s"))
        write_csv(args.out / LOG, meta["history"], ("iteration", "loss", "val_ods", "elapsed_s"))
        progress.message(str(meta["history"][-1]))
        losses.clear()

    while trainer.iteration < config.iterations and not stop.is_set():
        losses.append(trainer.step())
        progress.update(trainer.iteration, losses[-1], config.lr)
        if trainer.iteration % args.val_every == 0 or trainer.iteration == config.iterations:
            checkpoint()
        if args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes:
            break
    if losses:  # stopped by a signal or the time limit between checkpoints
        checkpoint()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
