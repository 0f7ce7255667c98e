"""Train the adverse-weather models: three teachers, then the student in two stages.

Usage (one command per stage; every one resumable with ``--resume``)::

    python -m training.weather.train teacher --weather rain --out runs/weather/teacher-rain ...
    python -m training.weather.train teacher --weather haze --out runs/weather/teacher-haze ...
    python -m training.weather.train teacher --weather snow --out runs/weather/teacher-snow ...
    python -m training.weather.train stage1 --teachers runs/weather/teacher-{rain,haze,snow}/last.pt \\
        --out runs/weather/student-stage1 ...
    python -m training.weather.train stage2 --init runs/weather/student-stage1/last.pt \\
        --out runs/weather/student-stage2 ...

Method (Chen et al., CVPR 2022, and the authors' ``train.py``):

* teacher: one network (``--architecture``: the paper's MSBDN-RDFF, ``models.msbdn``, or
  ``models.weathernet``, chosen by the pilots in docs/weather.md) on one weather, L1 to the clean
  image;
* stage 1, knowledge collection: the student sees every weather in every batch (one block per
  weather, block ``t`` also goes through teacher ``t``); loss = CKT (outputs + projected features +
  0.05 x teacher-feature reconstruction, as ``PFV_loss`` in the authors' ``train.py``;
  ``training.weather.losses.CKTLoss``) + 0.1 x SCR;
* stage 2, knowledge examination: the student alone, L1 to the clean image + 0.2 x HCR.

Data (``--data``): ``synthetic`` makes every batch in the loop with ``training.weather.data``'s
first generators (``WeatherPatches``); ``pool`` samples a pre-rendered pool of varied renderers
(``training.weather.pool``, ``training.weather.renderers``), with ``--clean-per-batch`` clean->clean
pairs after the weather blocks: they have no teacher, so stage 1 trains them by L1 to the photo
itself (``clean`` term), the other stages by the same L1 as the rest. Either way batch ``i`` is a
pure function of ``(seed, i)`` so a resumed run replays the uninterrupted one. Validation:
PSNR/SSIM per weather on ``--val-count`` BSDS500 *test* images that are not in the held-out test
set (centre crops, degraded with a fixed seed), and on the same crops left clean (``psnr_clean``:
how far the network moves a clean photo), every ``--val-every`` iterations, logged to ``log.csv``
with the loss terms and the CPU seconds; checkpoint ``last.pt`` at the same time.
``--benchmark N`` times N steps (and the share spent making batches) and exits.

Compute-driven choices, stated (the authors train full width on a GPU for 250 epochs):

* ``--width`` / ``--res-blocks`` shrink MSBDN-RDFF (``models.msbdn.MSBDNConfig``); ``--width`` /
  ``--max-channels`` / ``--attention`` / ``--head`` set WeatherNet; ``--channels-last`` and
  ``--amp`` (bfloat16) are what is fastest on a CPU with avx512_bf16, one thread per process
  (``OMP_NUM_THREADS=1``) when several runs share the cores; ``--clip`` bounds the gradient norm;
* ``--device cuda`` runs the networks and losses on a GPU (``--amp``: bfloat16 autocast there too,
  no loss scaling needed); the weather synthesis stays in NumPy on the CPU, one batch per step;
* ``--residual``: global residual learning (output = input + network, last conv zero-initialised,
  so training starts from the identity). Without it, a network that must first learn to
  reproduce its input spent the first hundreds of CPU iterations below the input's PSNR
  (teachers at iteration 259: rain 19.2 dB vs 21.5 dB input);
* Adam, lr ``--lr`` with a linear warm-up over the first 2% and cosine decay to ``--lr-min`` (the
  authors: 2e-4 x batch / 16, 3 warm-up epochs, cosine to 1e-6);
* SCR starts after the first 10% of stage 1 (``--cr-start``): a residual student starts as the
  identity, where restored == degraded and the ratio's denominator is 0 (measured: SCR = 57,000 at
  iteration 37, the student pushed away from its input to 18.9 dB on rain against 23.5 dB input,
  and Adam's second moments inflated for hundreds of steps); CKT moves it off the input first;
* the contrastive terms run the frozen VGG16 (HED trunk, see ``training.weather.losses``) on one
  ``--cr-crop`` crop of ``--cr-per-weather`` images per weather, not on the whole batch: the
  feature network costs several times the student on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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
from PIL import Image
from skimage.metrics import structural_similarity
from torch import nn

from export.hed import hed_from_onnx
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels as quantize
from export.weather import ARCHITECTURES, build_network, load_student, network_config
from models.msbdn import MSBDNConfig
from models.weathernet import WeatherNetConfig
from training.common.log import (
    Progress, machine_description, write_csv,
)
from training.common.checkpoints import check_resumable, save_checkpoint
from training.weather.data import WEATHERS, WeatherPatches, degrade, load_images
from training.weather.pool import PairPool
from training.weather.renderers import CLEAN
from training.weather.losses import CKTLoss, HCRLoss, SCRLoss, VGGFeatures
from training.weather.testset import write_test_set

__all__ = [
    "WeatherTrainConfig", "WeatherTrainer", "learning_rate", "validation_set", "validate",
    "restore", "ssim", "main",
]

CHECKPOINT = "last.pt"
LOG = "log.csv"
VAL_SEED = 7
STAGES = ("teacher", "stage1", "stage2")
DATA = ("synthetic", "pool")
#: Input sides the networks accept are multiples of this (MSBDN-RDFF: 32, WeatherNet: 16).
MULTIPLE = 32
#: The authors' weight of the teacher-feature reconstruction term in stage 1 (``PFV_loss`` in
#: their ``train.py``: ``0.05 * L1(reconstructed, teacher features)``).
RECONSTRUCTION_WEIGHT = 0.05


@dataclass(frozen=True)
class WeatherTrainConfig:
    """Everything that defines a run; ``architecture`` and ``width`` .. ``head`` the network."""

    stage: str = "teacher"
    weather: str | None = None  # teacher only
    architecture: str = "msbdn"  # or "weathernet" (models.weathernet)
    width: float = 1.0  # x the paper's channels (MSBDN-RDFF) or x 16 base channels (WeatherNet)
    res_blocks: int = 18  # MSBDN-RDFF only
    residual: bool = False  # MSBDN-RDFF only (WeatherNet is always residual)
    max_channels: int = 96  # WeatherNet only: the widest level's channels
    attention: str = "dct"  # WeatherNet only: "pool" or "dct"
    head: str = "physical"  # WeatherNet only: "residual" or "physical"
    data: str = "synthetic"  # in-loop first generators, or "pool" (training.weather.pool)
    clean_per_batch: int = 0  # clean->clean pairs per batch (pool data only)
    clip: float = 0.0  # gradient-norm clipping (0: none)
    channels_last: bool = False
    patch: int = 96
    per_weather: int = 4  # images per weather per batch (a teacher's batch is all its weather)
    iterations: int = 1000
    lr: float = 5e-4
    lr_min: float = 1e-6
    warmup: float = 0.02
    cr_weight: float = 0.1  # SCR in stage 1 (authors: 0.1), HCR in stage 2 (authors: 0.2)
    cr_crop: int = 64
    cr_per_weather: int = 1
    cr_start: float = 0.0  # fraction of the iterations before the contrastive term starts
    seed: int = 0
    amp: bool = False
    device: str = "cpu"

    def network(self) -> MSBDNConfig | WeatherNetConfig:
        return network_config(dataclasses.asdict(self))

    def counts(self) -> dict[str, int]:
        """Rows per group in a pool batch: a teacher's weather (or every weather), then clean."""
        weathers = [self.weather or ""] if self.stage == "teacher" else list(WEATHERS)
        counts = {w: self.per_weather for w in weathers}
        if self.clean_per_batch:
            counts[CLEAN] = self.clean_per_batch
        return counts


# May differ between a checkpoint and the command that resumes it.
RESUME_OVERRIDES = frozenset({"iterations", "device"})


def learning_rate(config: WeatherTrainConfig, iteration: int) -> float:
    """Linear warm-up then cosine decay: a pure function of the iteration (exact resume)."""
    warmup = max(1, round(config.warmup * config.iterations))
    if iteration < warmup:
        return config.lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, config.iterations - warmup)
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------ metrics
def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB images (scikit-image, Gaussian window as Wang et al. 2004)."""
    return float(structural_similarity(
        a, b, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    ))


@torch.no_grad()
def restore(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Whole image (H, W, 3 float [0, 1]) through a PyTorch model: reflect-pad to ``MULTIPLE``.

    Runs on the model's device, in float32, and returns a numpy image.
    """
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % MULTIPLE), (0, -w % MULTIPLE), (0, 0)), mode="reflect")
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None].float()
    parameter = next(model.parameters(), None)  # None: a parameter-free model (the identity)
    y = model(x if parameter is None else x.to(parameter.device))
    return y[0, :, :h, :w].permute(1, 2, 0).cpu().numpy()


# ----------------------------------------------------------------------------------- validation
def held_out_names(testset: Path) -> set[str]:
    """The photos of the held-out test set (``training.weather.testset``), which validation skips."""
    return {p.stem for p in (testset / CLEAN).glob("*.png")}


def validation_set(
    bsds_root: Path, exclude: set[str], count: int, crop: int | None = 192
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``count`` BSDS500 test images outside ``exclude`` (the held-out test set), centre crops
    (``crop=None``: whole images), degraded per weather with a fixed seed: ``{weather:
    [(degraded, clean), ...]}``, and the same crops undegraded under ``"clean"`` (how much a
    clean photo is changed: no harm)."""
    paths = sorted(p for p in (bsds_root / "images" / "test").glob("*.jpg") if p.stem not in exclude)
    step = max(1, len(paths) // max(count, 1))
    chosen = paths[::step][:count]
    images = load_images_from(chosen)
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {w: [] for w in (*WEATHERS, CLEAN)}
    for index, image in enumerate(images):
        h, w = image.shape[:2]
        size = (h, w) if crop is None else (crop, crop)
        top, left = (h - size[0]) // 2, (w - size[1]) // 2
        clean = np.ascontiguousarray(image[top : top + size[0], left : left + size[1]])
        for k, weather in enumerate(WEATHERS):
            rng = np.random.default_rng([VAL_SEED, index, k])
            out[weather].append((degrade(clean, weather, rng), clean))
        out[CLEAN].append((clean, clean))
    return out


def load_images_from(paths: Sequence[Path]) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]


def validate(
    model: nn.Module, sets: dict[str, list[tuple[np.ndarray, np.ndarray]]]
) -> dict[str, float]:
    """Mean PSNR/SSIM per weather of the 8-bit outputs: ``{"psnr_rain": ..., "ssim_rain": ...}``."""
    was_training = model.training
    model.eval()
    scores: dict[str, float] = {}
    for weather, pairs in sets.items():
        p, s = [], []
        for degraded, clean in pairs:
            out, ref = quantize(restore(model, degraded)), quantize(clean)
            p.append(psnr(out, ref))
            s.append(ssim(out, ref))
        if pairs:
            scores[f"psnr_{weather}"] = float(np.mean(p))
            scores[f"ssim_{weather}"] = float(np.mean(s))
    model.train(was_training)
    return scores


# -------------------------------------------------------------------------------------- trainer
class WeatherTrainer:
    """One stage's model(s), losses and optimiser; ``step(i)`` trains on batch ``i``."""

    def __init__(
        self,
        config: WeatherTrainConfig,
        data: WeatherPatches | PairPool,
        features: VGGFeatures | None = None,
        teachers: Sequence[nn.Module] = (),
        init: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if config.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        if config.stage == "teacher" and config.weather not in WEATHERS:
            raise ValueError(f"a teacher needs --weather in {WEATHERS}")
        if config.stage == "stage1" and len(teachers) != len(WEATHERS):
            raise ValueError(f"stage 1 needs {len(WEATHERS)} teachers ({', '.join(WEATHERS)})")
        if config.stage != "teacher" and features is None:
            raise ValueError("the contrastive losses need the feature network")
        if config.data not in DATA:
            raise ValueError(f"data must be one of {DATA}")
        if config.clean_per_batch and not isinstance(data, PairPool):
            raise ValueError("clean pairs per batch need pool data")
        self.config = config
        self.data = data
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.model = build_network(dataclasses.asdict(config))
        if init is not None:
            self.model.load_state_dict(init)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        # before the optimiser: it must hold the device's tensors
        self.model.to(self.device, memory_format=self.memory_format)
        self.teachers = [t.eval().requires_grad_(False).to(self.device, memory_format=self.memory_format)
                         for t in teachers]
        self.ckt = (
            CKTLoss(_feature_channels(self.teachers[0]), len(WEATHERS)).to(self.device)
            if config.stage == "stage1" else None
        )
        self.contrastive: nn.Module | None = None
        if features is not None and config.stage != "teacher":
            self.contrastive = (SCRLoss if config.stage == "stage1" else HCRLoss)(features)
            self.contrastive.to(self.device)
        parameters = list(self.model.parameters())
        if self.ckt is not None:
            parameters += list(self.ckt.parameters())
        self.optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999))
        self.iteration = 0

    # -------------------------------------------------------------------------------- batches
    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, degraded) for iteration ``index``: a teacher's weather only, else all blocks;
        with pool data, ``clean_per_batch`` clean->clean rows last."""
        per = self.config.per_weather
        if isinstance(self.data, PairPool):
            clean, degraded = self.data.batch(index, self.config.counts())
        else:
            clean, degraded = self.data.batch(index, per)
            if self.config.stage == "teacher":
                k = WEATHERS.index(self.config.weather or "")
                clean, degraded = clean[k * per : (k + 1) * per], degraded[k * per : (k + 1) * per]
        return tuple(  # type: ignore[return-value]
            torch.from_numpy(a).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            for a in (clean, degraded)
        )

    def _contrastive_crop(
        self, index: int, restored: torch.Tensor, clean: torch.Tensor, degraded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first ``cr_per_weather`` images of each block, cropped at a seeded position."""
        per, take = self.config.per_weather, self.config.cr_per_weather
        rows = [k * per + j for k in range(len(WEATHERS)) for j in range(min(take, per))]
        size = min(self.config.cr_crop, restored.shape[-1], restored.shape[-2])
        rng = np.random.default_rng([self.config.seed, index, 1])
        top = int(rng.integers(0, restored.shape[-2] - size + 1))
        left = int(rng.integers(0, restored.shape[-1] - size + 1))
        window = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
        return tuple(t[rows][window] for t in (restored, clean, degraded))  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------- step
    def losses(self, index: int) -> dict[str, torch.Tensor]:
        clean, degraded = self.batch(index)
        stage = self.config.stage
        terms: dict[str, torch.Tensor] = {}
        if stage == "teacher":
            terms["l1"] = F.l1_loss(self.model(degraded), clean)
            return terms
        if stage == "stage1":
            assert self.ckt is not None and self.contrastive is not None
            per = self.config.per_weather
            blocks = len(WEATHERS) * per  # the clean rows, if any, follow the weather blocks
            with torch.no_grad():
                outputs, features = [], []
                for k, teacher in enumerate(self.teachers):
                    out, feats = teacher.forward_features(degraded[k * per : (k + 1) * per])
                    outputs.append(out)
                    features.append(feats)
            restored, student_features = self.model.forward_features(degraded)
            terms.update(self.ckt(restored[:blocks], [f[:blocks] for f in student_features],
                                  outputs, features))
            terms["reconstruction"] = RECONSTRUCTION_WEIGHT * terms["reconstruction"]
            if len(restored) > blocks:  # clean photos: no teacher, the photo itself is the target
                terms["clean"] = F.l1_loss(restored[blocks:], clean[blocks:])
        else:
            assert self.contrastive is not None
            restored = self.model(degraded)
            terms["l1"] = F.l1_loss(restored, clean)
        name = "scr" if stage == "stage1" else "hcr"
        if index < self.config.cr_start * self.config.iterations:
            terms[name] = restored.new_zeros(())
        else:
            a, p, n = self._contrastive_crop(index, restored, clean, degraded)
            terms[name] = self.config.cr_weight * self.contrastive(a, p, n)
        return terms

    def step(self) -> dict[str, float]:
        index = self.iteration
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, index)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
            terms = self.losses(index)
        total = sum(terms.values(), torch.zeros((), device=self.device))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.config.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        self.iteration += 1
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    # ---------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "ckt": self.ckt.state_dict() if self.ckt is not None else None,
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(WeatherTrainConfig(**state["config"]), self.config, RESUME_OVERRIDES)
        self.model.load_state_dict(state["model"])
        if self.ckt is not None:
            self.ckt.load_state_dict(state["ckt"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])


def _feature_channels(model: nn.Module) -> list[int]:
    """Channels of the maps ``model.forward_features`` returns (one tiny run)."""
    parameter = next(model.parameters())
    with torch.no_grad():
        _, features = model.forward_features(torch.zeros(1, 3, 2 * MULTIPLE, 2 * MULTIPLE, device=parameter.device))
    return [int(f.shape[1]) for f in features]


# ----------------------------------------------------------------------------------------- loop
def run(
    trainer: WeatherTrainer,
    val_sets: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    out: Path,
    meta: dict[str, Any],
    val_every: int,
    max_minutes: float | None,
    stop: threading.Event,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train to ``config.iterations`` (or the time limit / a signal), validating and
    checkpointing every ``val_every`` iterations and at the end."""
    out.mkdir(parents=True, exist_ok=True)
    config = trainer.config
    history: list[dict[str, Any]] = meta.setdefault("history", [])
    elapsed0 = float(meta.get("elapsed_s", 0.0))
    cpu0 = float(meta.get("cpu_s", 0.0))  # process CPU time: fair across runs on a shared machine
    started, cpu_started = time.monotonic(), time.process_time()
    progress = Progress(config.iterations, start=trainer.iteration)
    sums: dict[str, float] = {}
    count = 0
    window_start = time.monotonic()

    def checkpoint() -> None:
        nonlocal sums, count, window_start
        speed = count / max(time.monotonic() - window_start, 1e-9)
        row: dict[str, Any] = {
            "iteration": trainer.iteration,
            "lr": learning_rate(config, trainer.iteration - 1),
            **{k: round(v / max(count, 1), 6) for k, v in sums.items()},
            **{k: round(v, 4) for k, v in validate(trainer.model, val_sets).items()},
            "iters_per_s": round(speed, 4),
        }
        row["elapsed_s"] = round(elapsed0 + time.monotonic() - started, 1)
        row["cpu_s"] = round(cpu0 + time.process_time() - cpu_started, 1)
        history.append(row)
        meta["elapsed_s"], meta["cpu_s"] = row["elapsed_s"], row["cpu_s"]
        save(trainer, out, meta)
        progress.message("  ".join(f"{k} {v}" for k, v in row.items()))
        sums, count, window_start = {}, 0, time.monotonic()

    while trainer.iteration < config.iterations and not stop.is_set():
        values = trainer.step()
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        progress.update(trainer.iteration, values["loss"], learning_rate(config, trainer.iteration - 1))
        if trainer.iteration % val_every == 0 or trainer.iteration == config.iterations:
            checkpoint()
        if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
            break
        if stop_at is not None and trainer.iteration >= stop_at:
            break
    if count:  # stopped by a signal or the time limit between checkpoints
        checkpoint()
    return meta


def save(trainer: WeatherTrainer, out: Path, meta: dict[str, Any]) -> None:
    save_checkpoint(out / CHECKPOINT, {**trainer.state_dict(), **meta})
    history = meta.get("history", [])
    columns = list(dict.fromkeys(k for row in history for k in row))
    write_csv(out / LOG, history, columns)


# ------------------------------------------------------------------------------------------ CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.weather.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--weather", choices=WEATHERS, help="the teacher's weather")
    parser.add_argument("--teachers", type=Path, nargs=3, metavar=("RAIN", "HAZE", "SNOW"),
                        help="stage 1: the teachers' checkpoints, in the order rain haze snow")
    parser.add_argument("--init", type=Path, help="stage 2: the stage-1 student checkpoint")
    parser.add_argument("--bsds", type=Path, default=Path("../shared/data/bsds500"))
    parser.add_argument("--testset", type=Path, default=Path("runs/weather-test"),
                        help="held-out test set (written if missing); excluded from validation")
    parser.add_argument("--hed-onnx", type=Path, default=Path("models/onnx/hed-bsds500.onnx"),
                        help="VGG16 trunk for SCR/HCR (the committed HED model)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--stop-at", type=int,
                        help="stop (validated, saved) at this iteration; the schedule keeps --iterations")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--val-count", type=int, default=6)
    parser.add_argument("--architecture", choices=ARCHITECTURES,
                        help="msbdn (the paper's MSBDN-RDFF) or weathernet (models.weathernet)")
    parser.add_argument("--width", type=float)
    parser.add_argument("--res-blocks", type=int)
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                        help="MSBDN-RDFF: global residual learning (output = input + network)")
    parser.add_argument("--attention", choices=("pool", "dct"), help="WeatherNet's channel statistics")
    parser.add_argument("--head", choices=("residual", "physical"), help="WeatherNet's output head")
    parser.add_argument("--data", choices=DATA,
                        help="synthetic: the first generators in the loop; pool: a written pool")
    parser.add_argument("--pool", type=Path, default=Path("runs/weather-pool"),
                        help="the pool (python -m training.weather.pool) for --data pool")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--benchmark", type=int, metavar="N",
                        help="time N training steps (data and network apart) and exit")
    for field in ("max_channels", "patch", "per_weather", "clean_per_batch", "iterations", "cr_crop",
                  "cr_per_weather", "seed"):
        parser.add_argument("--" + field.replace("_", "-"), type=int)
    for field in ("lr", "lr_min", "warmup", "cr_weight", "cr_start", "clip"):
        parser.add_argument("--" + field.replace("_", "-"), type=float)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bfloat16 autocast (CPUs with avx512_bf16, CUDA GPUs from sm_80)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="where the networks and losses run (data synthesis stays on the CPU)")
    return parser.parse_args(argv)


#: The fields that define the network: a student gets them from its teachers (stage 1) or from
#: its stage-1 checkpoint (stage 2).
NETWORK_FIELDS = ("architecture", "width", "res_blocks", "residual", "max_channels", "attention", "head")


def _config(args: argparse.Namespace, network: dict[str, Any] | None) -> WeatherTrainConfig:
    base = WeatherTrainConfig(
        stage=args.stage, weather=args.weather if args.stage == "teacher" else None,
        cr_weight=0.2 if args.stage == "stage2" else 0.1,
        cr_start=0.1 if args.stage == "stage1" else 0.0,
    )
    if network:  # the student has the teachers' architecture (the paper's setting)
        base = dataclasses.replace(base, **{k: network[k] for k in NETWORK_FIELDS if k in network})
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(WeatherTrainConfig)
        if f.name not in ("stage", "weather") and getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **overrides)


def benchmark(trainer: WeatherTrainer, steps: int) -> int:
    """Time ``steps`` training steps; print the median and the fastest (a busy machine inflates
    the median; the minimum is closest to the network's own cost) and the share spent making
    batches. Leaves no checkpoint."""
    data_times, step_times = [], []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.batch(trainer.iteration)
        data_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        trainer.step()  # makes its batch again: the step time includes it once
        step_times.append(time.perf_counter() - started)
    steady = sorted(step_times[2:] or step_times)
    data = sorted(data_times[2:] or data_times)
    median, fastest = steady[len(steady) // 2], steady[0]
    print(f"benchmark: {len(steady)} steps, step median {median:.3f} s, fastest {fastest:.3f} s; "
          f"batch making median {data[len(data) // 2]:.4f} s "
          f"({100 * data[len(data) // 2] / median:.1f}% of a step)", flush=True)
    return 0


def _feature_network(path: Path) -> VGGFeatures:
    return VGGFeatures(hed_from_onnx(onnx.load(str(path))).hed)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    teachers: list[nn.Module] = []
    network: dict[str, Any] | None = None
    if args.stage == "stage1":
        if not args.teachers:
            raise SystemExit("stage1 needs --teachers RAIN HAZE SNOW")
        loaded = [load_student(p) for p in args.teachers]
        teachers = [model for model, _ in loaded]
        network = loaded[0][1]["config"]
    init = None
    if args.stage == "stage2":
        if not args.init:
            raise SystemExit("stage2 needs --init (the stage-1 checkpoint)")
        student, student_meta = load_student(args.init)
        network = student_meta["config"]
        init = student.state_dict()
    config = _config(args, network)
    write_test_set(args.bsds, args.testset)
    exclude = held_out_names(args.testset)
    val_sets = validation_set(args.bsds, exclude, args.val_count)
    if config.stage == "teacher":
        val_sets = {k: v for k, v in val_sets.items() if k in (config.weather, CLEAN)}
    if config.data == "pool":
        data: WeatherPatches | PairPool = PairPool(args.pool, config.patch, config.seed)
        source = f"pool {args.pool} ({data.meta['pairs']} pairs of {data.meta['size']} px per group)"
    else:
        data = WeatherPatches(load_images(args.bsds, ("train", "val")), config.patch, config.seed)
        source = f"{len(data.images)} training images"
    features = _feature_network(args.hed_onnx) if config.stage != "teacher" else None
    trainer = WeatherTrainer(config, data, features, teachers, init)
    if args.benchmark:
        return benchmark(trainer, args.benchmark)
    command = shlex.join(["python", "-m", "training.weather.train", *(argv or sys.argv[1:])])
    meta: dict[str, Any] = {"command": command, "machine": machine_description(trainer.device)}
    if args.resume:
        state = torch.load(args.out / CHECKPOINT, map_location="cpu", weights_only=False)
        trainer.load_state_dict(state)
        meta.update({k: state[k] for k in ("history", "elapsed_s", "cpu_s") if k in state})
        meta["command"] = f"{state.get('command', '')} && {command}"
    parameters = sum(p.numel() for p in trainer.model.parameters())
    print(f"{config.stage} {config.weather or ''}: {trainer.model.config} "
          f"({parameters / 1e6:.2f} M parameters); {source}, patch {config.patch}, "
          f"{config.counts() if config.data == 'pool' else config.per_weather} per batch; "
          f"{config.iterations} iterations; {meta['machine']}", flush=True)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        meta = run(trainer, val_sets, args.out, meta, args.val_every, args.max_minutes, stop,
                   args.stop_at)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"done at iteration {trainer.iteration}; {meta.get('elapsed_s', 0) / 60:.1f} min",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
