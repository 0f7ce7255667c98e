"""DnCNN training state: the paper's recipe as a config, the model's initialisation, one Adam step,
validation and checkpoints. ``training.dncnn.train`` is the command that drives it.

Recipe (Zhang et al. 2017, Sec. III-IV; the authors' MatConvNet ``Demo_Train_model_*_Adam.m`` and
PyTorch ``main_train.py``), and the choices made where the sources differ:

* model: ``models.dncnn`` with BatchNorm (17 layers for DnCNN-S, 20 for -B/CDnCNN-B), residual
  learning (the network predicts the noise); initialisation of the authors' ``DnCNN_init.m``
  (He-normal convolutions, the paper's [34]; small random BatchNorm scales, see ``init_weights``);
* data (``training.dncnn.data``): Train400 (gray) or BSD432 (colour); scales 1/0.9/0.8/0.7, stride
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

Camera noise (``noise="camera"``, the ``cdncnn-b-camera`` variant, issue 15): each patch gets one
of ``training.dncnn.camera_noise.FAMILIES`` (sensor noise in linear light, gamma, JPEG 4:2:0 or
4:4:4, or the paper's Gaussian) and the network learns to predict noisy minus clean; validation
then averages the Gaussian sigma ``val_sigma`` PSNR with the realistic test families on the same
images. ``init`` starts from the weights of an exported DnCNN (an ONNX file, e.g. the authors'
CDnCNN-B as ``models/onnx/dncnn-color-blind.onnx``), which needs ``batch_norm=False``: the
converted releases have BatchNorm folded into the convolutions. That network has no BatchNorm to
keep it in range, and Adam's first steps move every weight by the full learning rate: one step
of 1e-4 raised the loss of CDnCNN-B from 4.3 to 330, three of 1e-5 doubled it. ``warmup`` ramps
the rate up over the first iterations while Adam's moment estimates settle.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from export.dncnn import dncnn_from_onnx
from models.dncnn import DnCNN, DnCNNConfig, dncnn_config
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels
from training.common.checkpoints import check_resumable, save_checkpoint
from training.dncnn.camera_noise import TEST_FAMILIES
from training.dncnn.camera_testset import render
from training.dncnn.data import PatchSampler
from training.dncnn.evaluate import add_noise, noise_rng

__all__ = [
    "TrainConfig", "VARIANTS", "RESUME_OVERRIDES", "Trainer", "init_weights", "learning_rate",
    "validate", "initial_weights", "save_checkpoint", "load_checkpoint", "config_from_dict",
]

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
    warmup: int = 0  # iterations of linear learning-rate warm-up from lr / warmup
    iterations: int | None = None  # default PAPER_PASSES passes over the patch set
    milestones: tuple[int, ...] | None = None  # default: 60% of the iterations
    epoch_iters: int | None = None  # default: one pass over the patch set
    seed: int = 0
    amp: bool = False
    channels_last: bool = True
    device: str = "cpu"
    noise: str = "gaussian"  # or "camera" (training.dncnn.camera_noise)
    gaussian_share: float = 0.25  # camera noise: the share of plain Gaussian patches
    batch_norm: bool = True  # False: the released models' layout (needed by ``init``)
    init: str | None = None  # an exported DnCNN (.onnx) to start from

    def model_config(self) -> DnCNNConfig:
        """The architecture: ``arch``'s config with the ``depth`` / ``features`` overrides."""
        config = dncnn_config(self.arch, depth=self.depth, features=self.features)
        return dataclasses.replace(config, batch_norm=self.batch_norm)

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
    "cdncnn-b-camera": TrainConfig(
        arch="cdncnn-b", train_set="BSD432", val_set="CBSD68", sigma_range=(0.0, 55.0),
        patch_size=50, max_patches=128 * 3000, noise="camera",
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
    """Step schedule: ``lr * lr_decay ** (milestones passed)``, ramped up linearly over the first
    ``warmup`` iterations."""
    passed = sum(iteration >= m for m in config.milestones or ())
    ramp = min(1.0, (iteration + 1) / config.warmup) if config.warmup else 1.0
    return config.lr * config.lr_decay**passed * ramp


def _noisy_versions(clean: np.ndarray, name: str, set_name: str, sigma: int, camera: bool) -> list[np.ndarray]:
    """The validation inputs of one image: Gaussian at ``sigma``, and with ``camera`` the realistic
    test set's families (``training.dncnn.camera_testset``), float32 in [0, 1]."""
    versions = [add_noise(clean, sigma, noise_rng(set_name, name, sigma))]
    for family in TEST_FAMILIES if camera else ():
        decoded = Image.open(io.BytesIO(render(family, name, clean))).convert("RGB")
        versions.append(np.asarray(decoded, dtype=np.float32) / 255.0)
    return versions


@torch.inference_mode()
def validate(
    model: DnCNN, images: Sequence[tuple[str, np.ndarray]], set_name: str, sigma: int,
    device: torch.device, channels_last: bool = False, camera: bool = False,
) -> float:
    """Mean PSNR in float32 with ``training.dncnn.evaluate``'s noise, clipping and rounding (and
    with ``camera``, over the realistic families too)."""
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    scores = []
    for name, clean in images:
        for noisy in _noisy_versions(clean, name, set_name, sigma, camera):
            chw = noisy[None] if noisy.ndim == 2 else noisy.transpose(2, 0, 1)
            x = torch.from_numpy(np.ascontiguousarray(chw))[None].to(device, memory_format=fmt)
            y = model(x)[0].float().cpu().numpy()
            out = y[0] if noisy.ndim == 2 else y.transpose(1, 2, 0)
            scores.append(psnr(to_pixels(out), clean))
    return float(np.mean(scores))


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an exported ``DnCNN(batch_norm=False)`` ONNX file (float32)."""
    return {k: v.float() for k, v in dncnn_from_onnx(onnx.load(str(path))).state_dict().items()}


class Trainer:
    """Model, optimiser and data stream of one run; ``iteration`` counts finished steps."""

    def __init__(self, config: TrainConfig, patches: np.ndarray) -> None:
        device = torch.device(config.device)
        sampler = PatchSampler(patches, config.batch_size, config.sigma_range, config.seed, config.noise,
                               config.gaussian_share)
        self.config = config.resolve(sampler.batches_per_pass)
        self.sampler = sampler
        self.device = device
        self.format = torch.channels_last if config.channels_last else torch.contiguous_format
        torch.manual_seed(config.seed)
        model = DnCNN(**dataclasses.asdict(self.config.model_config()))
        init_weights(model)
        if config.init:
            model.load_state_dict(initial_weights(Path(config.init)), strict=True)
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
        check_resumable(config_from_dict(state["config"]), self.config, RESUME_OVERRIDES)
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as saved by ``training.dncnn.train.run`` (tensors and plain data only)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
