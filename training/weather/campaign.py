"""Train the conditioned weather student (model 3) as a campaign: open-ended, resumable, scored.

Why a trainer of its own: round 3 changed what a run is (docs/weather.md, "Model 3"). The
student takes the weather as an input; it starts from the trained 2.0 weights (``--init``,
``models.weathernet.adapt_state_dict``) instead of from nothing; the rain teacher is a public
network of another architecture whose outputs are precomputed (``training.weather.teacher_cache``);
and the run has no horizon: a constant learning rate after a short warm-up, an exponential moving
average of the weights (``torch.optim.swa_utils``) that is what gets scored and shipped, and
validation on *whole* photos (crops misranked these models last round) at fixed intervals, so
the curve says when to stop. ``--max-cpu-minutes`` ends a session's share; ``--resume`` continues
exactly where it stopped (batches are a pure function of ``(seed, iteration)``).

One batch: ``--rows`` crops per group of the pool (``rain``, ``haze``, ``snow``, ``clean``), each row
with a weather label: its own weather, replaced by ``unknown`` with probability
``--unknown-rate`` (the blind setting, ``?weather=auto``), and clean rows under a label drawn
uniformly from all four (a clean photo sent to ``/derain`` must come back unchanged). Loss: L1 to
the clean image on every row, plus ``--kd`` x L1 to the teacher's output on the rows that have
one (output-level distillation: PReNet has no features at the student's resolutions, see the
model card).

    python -m training.weather.campaign --out runs/weather-m3/main \\
        --init resume/weather/student-stage2.pt --conditions 4 --upsample bilinear \\
        --encoder-blocks 1 1 2 4 --decoder-blocks 1 1 1 2 --amp --channels-last
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from restore.core.metrics import psnr
from restore.core.pixels import to_pixels as quantize
from export.weather import load_student
from models.weathernet import (
    MULTIPLE, WEATHER_LABELS, WeatherNet, WeatherNetConfig, adapt_state_dict, weather_onehot,
)
from training.common.checkpoints import check_resumable, save_checkpoint
from training.common.log import Progress, machine_description, write_csv
from training.weather.data import WEATHERS
from training.weather.pool import GROUPS, PairPool, teacher_file
from training.weather.teachers import TEACHERS
from training.weather.renderers import CLEAN, weather_of
from training.weather.testset import write_test_set
from training.weather.train import held_out_names, validation_set

__all__ = ["CampaignConfig", "Campaign", "row_labels", "score", "main"]

CHECKPOINT = "last.pt"
LOG = "log.csv"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CampaignConfig:
    """Everything that defines a run (``network``: ``WeatherNetConfig`` fields)."""

    network: dict[str, Any] = field(default_factory=dict)
    init: str = ""  # the checkpoint the weights started from ("" = from scratch)
    rows: dict[str, int] = field(default_factory=lambda: {"rain": 4, "haze": 3, "snow": 3, CLEAN: 2})
    patch: int = 128
    unknown_rate: float = 0.25
    kd: float = 0.5
    lr: float = 2e-4
    warmup: int = 100
    ema: float = 0.999
    clip: float = 1.0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False  # torch.compile (inductor) of the training forward
    refine_lr_scale: float = 1.0  # the full-resolution Refine stage's rate, as a multiple of lr
    seed: int = 0

    def network_config(self) -> WeatherNetConfig:
        return WeatherNetConfig.from_dict(self.network)


#: May differ between a checkpoint and the command that resumes it: they change no past step. A
#: new ``lr`` is a hand-made step of the otherwise constant rate, from the resumed iteration on
#: (the log's ``lr`` column shows where); the warm-up is not repeated. New ``rows`` change the
#: mix of later batches (the checkpoint's ``phases`` record each change and where it began).
RESUME_OVERRIDES = frozenset({"amp", "channels_last", "compile", "lr", "rows", "refine_lr_scale"})


def row_labels(config: CampaignConfig, index: int) -> list[str]:
    """The weather label of every row of batch ``index``, in the pool's row order."""
    rng = np.random.default_rng([config.seed, index, 3])
    labels = []
    for group, count in config.rows.items():
        for _ in range(count):
            if group == CLEAN:
                labels.append(WEATHER_LABELS[int(rng.integers(len(WEATHER_LABELS)))])
            else:
                labels.append(UNKNOWN if rng.random() < config.unknown_rate else weather_of(group))
    return labels


def learning_rate(config: CampaignConfig, iteration: int) -> float:
    """Linear warm-up, then constant: the run can go on for as long as the curve rises."""
    return config.lr * min(1.0, (iteration + 1) / max(1, config.warmup))


def parameter_groups(model: WeatherNet) -> list[dict[str, Any]]:
    """The optimiser's groups: a ``Refine`` stage in a group of its own (``refine_lr_scale``).
    Why: added to a trained network, it starts from nothing while the rest is fine-tuned at a rate
    small enough not to undo it (haze fell 2.4 dB in 1400 steps at 2e-4); at the same rate the
    new stage had not engaged after 500 steps (docs/weather.md, pilots). The grouping depends only
    on the network, so a resume may change the scale."""
    if model.refine is None:
        return [{"params": list(model.parameters())}]
    refine = set(map(id, model.refine.parameters()))
    return [{"params": [p for p in model.parameters() if id(p) not in refine]},
            {"params": list(model.refine.parameters()), "name": "refine"}]


class Campaign:
    """The student, its EMA, the optimiser; ``step()`` trains on the next batch."""

    def __init__(self, config: CampaignConfig, pool: PairPool, init: dict[str, torch.Tensor] | None = None,
                 init_config: WeatherNetConfig | None = None) -> None:
        self.config = config
        self.pool = pool
        torch.manual_seed(config.seed)
        self.model = WeatherNet(config.network_config())
        if init is not None:
            state = adapt_state_dict(init, init_config or self.model.config, self.model.config)
            missing = self.model.load_state_dict(state, strict=False).missing_keys
            self.new_parameters = missing
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema),
                                 use_buffers=True)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model), lr=config.lr, weight_decay=0.0)
        # inductor fuses the memory-bound norms, gates and depthwise filters; the module's
        # parameters are shared, so the optimiser, the EMA and the checkpoints see no difference
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.iteration = 0
        self.restarted: list[int] = []  # parameters whose Adam step count a resume restarted

    def batch(self, index: int) -> tuple[torch.Tensor, ...]:
        clean, degraded, teacher, mask = self.pool.triples(index, self.config.rows)
        tensors = [torch.from_numpy(a).contiguous(memory_format=self.memory_format)
                   for a in (clean, degraded, teacher)]
        return (*tensors, torch.from_numpy(mask), weather_onehot(row_labels(self.config, index)))

    def losses(self, index: int) -> dict[str, torch.Tensor]:
        clean, degraded, teacher, mask, weather = self.batch(index)
        restored = self.forward(degraded, weather).float()
        terms = {"l1": F.l1_loss(restored, clean)}
        if self.config.kd and bool(mask.any()):
            terms["kd"] = self.config.kd * F.l1_loss(restored[mask], teacher[mask])
        return terms

    def step(self) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            scale = self.config.refine_lr_scale if group.get("name") == "refine" else 1.0
            group["lr"] = scale * learning_rate(self.config, self.iteration)
        self.model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.amp):
            terms = self.losses(self.iteration)
        total = sum(terms.values(), torch.zeros(()))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.config.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        self.iteration += 1
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def compiled_gradient_mismatches(self, rows: int = 2) -> list[str]:
        """The parameters whose gradient through ``torch.compile`` disagrees with eager PyTorch's
        on the same rows of the first batch (cosine under 0.99, or none where eager has one).
        Why: inductor's CPU backward of this network (bfloat16, channels_last, torch 2.13)
        returned zero gradients through the bilinear upsamplings and wrong ones elsewhere, and a
        compiled run trains silently on them; one eager step costs less than finding out later."""
        clean, degraded, _, _, weather = (t[:rows] for t in self.batch(self.iteration))
        grads = []
        for forward in (self.model, self.forward):
            self.model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.amp):
                F.l1_loss(forward(degraded, weather).float(), clean).backward()
            grads.append({n: torch.zeros(p.shape) if p.grad is None else p.grad.detach().float().clone()
                          for n, p in self.model.named_parameters()})
        self.model.zero_grad(set_to_none=True)
        eager, compiled = grads
        return [n for n, g in eager.items() if bool(g.any())
                and float(F.cosine_similarity(g.flatten(), compiled[n].flatten(), dim=0)) < 0.99]

    def state_dict(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "iteration": self.iteration,
                "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(CampaignConfig(**state["config"]), self.config, RESUME_OVERRIDES)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.restarted = restart_unused_moments(self.optimizer)
        self.iteration = int(state["iteration"])


def restart_unused_moments(optimizer: torch.optim.Optimizer) -> list[int]:
    """Reset Adam's step count of every parameter whose second moment is still all zero (it has
    never had a gradient), so that its first real updates get Adam's bias correction instead of
    the correction of a long-run step count: with ``v`` near zero and no correction, the first
    hundred updates would be 3-6 times the rate. Why it happens: from step 0 to 32476 of model 3's
    campaign, ``torch.compile``'s backward returned zero gradients through the bilinear
    upsamplings, so two thirds of the parameters never moved (docs/weather.md). Returns the indices
    (in the optimizer's parameter order) of the parameters reset."""
    reset = []
    parameters = (p for group in optimizer.param_groups for p in group["params"])
    for index, parameter in enumerate(parameters):
        state = optimizer.state.get(parameter, {})
        if "exp_avg_sq" in state and not bool(state["exp_avg_sq"].any()) and float(state["step"]) > 0:
            state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0
            state["exp_avg"].zero_()
            reset.append(index)
    return reset


# ------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def _restore(model: nn.Module, image: np.ndarray, label: str) -> np.ndarray:
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % MULTIPLE), (0, -w % MULTIPLE), (0, 0)), mode="reflect")
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None].float()
    y = model(x, weather_onehot([label]))
    return y[0, :, :h, :w].permute(1, 2, 0).numpy()


def score(model: nn.Module, sets: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, float]:
    """Mean PSNR of the 8-bit outputs: each weather under its own label and under ``unknown``,
    clean photos under every label (``psnr_clean_<label>``: how far a route moves a clean photo)."""
    was_training = model.training
    model.eval()
    scores: dict[str, float] = {}
    for group, pairs in sets.items():
        labels = WEATHER_LABELS if group == CLEAN else (group, UNKNOWN)
        for label in labels:
            values = [psnr(quantize(_restore(model, degraded, label)), quantize(clean))
                      for degraded, clean in pairs]
            name = f"psnr_{group}_{label}" if group == CLEAN or label == UNKNOWN else f"psnr_{group}"
            scores[name] = round(float(np.mean(values)), 4)
    model.train(was_training)
    return scores


# ---------------------------------------------------------------------------------------- loop
def run(campaign: Campaign, val_sets: dict[str, list[tuple[np.ndarray, np.ndarray]]], out: Path,
        meta: dict[str, Any], val_every: int, max_cpu_minutes: float | None, stop: threading.Event,
        stop_at: int | None = None) -> dict[str, Any]:
    """Train until stopped (signal, CPU budget or ``stop_at``), scoring the EMA every
    ``val_every`` iterations and saving ``last.pt`` each time and at the end."""
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = meta.setdefault("history", [])
    cpu0, elapsed0 = float(meta.get("cpu_s", 0.0)), float(meta.get("elapsed_s", 0.0))
    cpu_started, started = time.process_time(), time.monotonic()
    progress = Progress(stop_at or campaign.iteration + 10**6, start=campaign.iteration)
    sums: dict[str, float] = {}
    count, window = 0, time.monotonic()

    def checkpoint(validate: bool) -> None:
        nonlocal sums, count, window
        row: dict[str, Any] = {"iteration": campaign.iteration,
                               "lr": learning_rate(campaign.config, campaign.iteration - 1),
                               **{k: round(v / max(count, 1), 6) for k, v in sums.items()},
                               "s_per_step": round((time.monotonic() - window) / max(count, 1), 3)}
        row["cpu_s"] = round(cpu0 + time.process_time() - cpu_started, 1)
        row["elapsed_s"] = round(elapsed0 + time.monotonic() - started, 1)
        if validate:
            row.update(score(campaign.ema.module, val_sets))
        history.append(row)
        meta["cpu_s"], meta["elapsed_s"] = row["cpu_s"], row["elapsed_s"]
        save_checkpoint(out / CHECKPOINT, {**campaign.state_dict(), **meta})
        write_csv(out / LOG, history, list(dict.fromkeys(k for r in history for k in r)))
        progress.message("  ".join(f"{k} {v}" for k, v in row.items()))
        sums, count, window = {}, 0, time.monotonic()

    def spent() -> bool:
        return max_cpu_minutes is not None and time.process_time() - cpu_started > 60 * max_cpu_minutes

    while not stop.is_set() and not spent() and (stop_at is None or campaign.iteration < stop_at):
        values = campaign.step()
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        progress.update(campaign.iteration, values["loss"], learning_rate(campaign.config, campaign.iteration - 1))
        if campaign.iteration % val_every == 0:
            checkpoint(validate=True)
    if count:
        checkpoint(validate=True)
    return meta


# ----------------------------------------------------------------------------------------- CLI
def _rows(text: str) -> dict[str, int]:
    rows = {}
    for part in text.split(","):
        group, _, count = part.partition("=")
        if group not in GROUPS or not count.isdigit():
            raise argparse.ArgumentTypeError(f"rows look like rain=4,haze=3,snow=3,clean=2, not {text!r}")
        rows[group] = int(count)
    return rows


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.weather.campaign",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init", type=Path, help="warm start from a trained student checkpoint")
    parser.add_argument("--bsds", type=Path, default=Path("../shared/data/bsds500"))
    parser.add_argument("--testset", type=Path, default=Path("runs/weather-test"))
    parser.add_argument("--pool", type=Path, default=Path("runs/weather-pool"))
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--val-count", type=int, default=6, help="whole validation photos")
    parser.add_argument("--max-cpu-minutes", type=float, help="stop after this much process CPU time")
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--conditions", type=int)
    parser.add_argument("--upsample", choices=("shuffle", "bilinear"))
    parser.add_argument("--encoder-blocks", type=int, nargs=4)
    parser.add_argument("--decoder-blocks", type=int, nargs=4)
    parser.add_argument("--middle-blocks", type=int)
    parser.add_argument("--refine", type=int, help="channels of a plain-convolution stage at full resolution")
    parser.add_argument("--refine-layers", type=int)
    parser.add_argument("--rows", type=_rows)
    for name in ("patch", "warmup", "seed"):
        parser.add_argument("--" + name, type=int)
    for name in ("unknown_rate", "kd", "lr", "ema", "clip", "refine_lr_scale"):
        parser.add_argument("--" + name.replace("_", "-"), type=float)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the training forward (inductor)")
    parser.add_argument("--benchmark", type=int, metavar="N", help="time N training steps and exit")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace, init_config: WeatherNetConfig | None) -> CampaignConfig:
    network = init_config.as_dict() if init_config is not None else WeatherNetConfig().as_dict()
    for name in ("conditions", "upsample", "encoder_blocks", "decoder_blocks", "middle_blocks", "refine",
                 "refine_layers"):
        value = getattr(args, name)
        if value is not None:
            network[name] = tuple(value) if isinstance(value, list) else value
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(CampaignConfig)
              if f.name not in ("network", "init") and getattr(args, f.name, None) is not None}
    network = WeatherNetConfig.from_dict(network).as_dict()  # validated, tuples as lists
    return CampaignConfig(network=network, init=str(args.init or ""), **values)


def teacher_provenance(pool: Path, config: CampaignConfig) -> dict[str, dict[str, Any]]:
    """Which teacher's stored outputs each pool group was distilled from (``teacher_cache``'s
    record and ``training.weather.teachers``' registry), for the model card and the manifest."""
    out: dict[str, dict[str, Any]] = {}
    for group in WEATHERS:
        record = teacher_file(pool, group).with_suffix(".json")
        if not config.kd or not record.exists():
            continue
        made = json.loads(record.read_text())
        teacher = TEACHERS[made["teacher"]]
        weights = teacher.file if teacher.ours else f"../shared/weights/teachers/{teacher.file}"
        out[group] = {"teacher": made["teacher"], "weights": weights, "pairs": made["count"],
                      "use": f"its outputs on the first {made['count']} pairs of the pool, L1 at weight {config.kd} "
                             "beside L1 to the clean photo (output-level distillation)"}
    return out


def resumed_phases(state: dict[str, Any], config: CampaignConfig,
                   teachers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoint's record of hand-made changes, plus this resume's if it makes one: from
    which iteration a new rate, a new batch mix, a new teacher (a teacher file added to the
    pool) or ``torch.compile`` switched on or off applies. The first phase is the run as started."""
    saved = CampaignConfig(**state["config"])
    phases = list(state.get("phases") or [])
    if not phases:  # a checkpoint from before phases were recorded: its rate steps are in the log
        previous = 0  # a log row closes a stretch: a new rate began after the row before it
        for row in state.get("history", []):
            if not phases or row["lr"] != phases[-1]["lr"]:
                phases.append({"iteration": previous, "lr": row["lr"], "rows": saved.rows,
                               "teachers": sorted(state.get("teachers", {})), "compile": saved.compile})
            previous = int(row["iteration"])
    last = phases[-1] if phases else {}
    now = {"lr": config.lr, "rows": config.rows, "teachers": sorted(teachers), "compile": config.compile,
           "refine_lr_scale": config.refine_lr_scale}
    # phases recorded before compile (or the refine rate) was one
    last = {"compile": saved.compile, "refine_lr_scale": saved.refine_lr_scale, **last}
    if any(last.get(k) != v for k, v in now.items()):
        phases.append({"iteration": int(state["iteration"]), **now})
    return phases


def benchmark(campaign: Campaign, steps: int) -> int:
    """Time ``steps`` training steps (after 3 untimed ones: warm-up, compilation) and print the
    median and fastest step and the share spent making batches; leaves no checkpoint."""
    for _ in range(3):
        campaign.step()
    step_times, data_times = [], []
    for _ in range(steps):
        started = time.perf_counter()
        campaign.batch(campaign.iteration)
        data_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        campaign.step()
        step_times.append(time.perf_counter() - started)
    step_times.sort()
    data = sorted(data_times)[len(data_times) // 2]
    median = step_times[len(step_times) // 2]
    rows = sum(campaign.config.rows.values())
    print(f"benchmark: {steps} steps of {rows} x {campaign.config.patch} px, step median {median:.3f} s, "
          f"fastest {step_times[0]:.3f} s, {rows / median:.1f} crops/s; batch making {data:.4f} s "
          f"({100 * data / median:.1f}%); {torch.get_num_threads()} threads", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    init = init_config = None
    if args.init:
        student, _ = load_student(args.init)
        init, init_config = student.state_dict(), student.config
    config = _config(args, init_config)
    if args.resume:
        state = torch.load(args.out / CHECKPOINT, map_location="cpu", weights_only=False)
        saved = CampaignConfig(**state["config"])  # only what the command gives again may change
        config = dataclasses.replace(saved, **{k: getattr(args, k) for k in RESUME_OVERRIDES
                                               if getattr(args, k, None) is not None})
        init = None  # the checkpoint has the weights
    pool = PairPool(args.pool, config.patch, config.seed)
    campaign = Campaign(config, pool, init, init_config)
    if args.resume:  # before the compile check: a fresh network's gradients are mostly zero
        campaign.load_state_dict(state)
    if config.compile and (wrong := campaign.compiled_gradient_mismatches()):
        raise SystemExit(f"torch.compile's gradients differ from eager PyTorch's for {len(wrong)} parameters "
                         f"(first: {', '.join(wrong[:3])}): run with --no-compile")
    if args.benchmark:
        return benchmark(campaign, args.benchmark)
    meta: dict[str, Any] = {"command": shlex.join(["python", "-m", "training.weather.campaign", *(argv or sys.argv[1:])]),
                            "machine": machine_description(torch.device("cpu")), "pool": str(args.pool),
                            "teachers": teacher_provenance(args.pool, config)}
    if args.resume:
        meta.update({k: state[k] for k in ("history", "elapsed_s", "cpu_s") if k in state})
        meta["command"] = f"{state.get('command', '')} && {meta['command']}"
        meta["phases"] = resumed_phases(state, config, meta["teachers"])
        if campaign.restarted:
            print(f"{len(campaign.restarted)} parameters never updated: their Adam step count restarted", flush=True)
    write_test_set(args.bsds, args.testset)
    val_sets = validation_set(args.bsds, held_out_names(args.testset), args.val_count, crop=None)
    parameters = sum(p.numel() for p in campaign.model.parameters())
    print(f"model 3 campaign: {campaign.model.config} ({parameters / 1e6:.2f} M parameters), "
          f"rows {config.rows}, teachers for {sorted(pool.teachers)}; {meta['machine']}", flush=True)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run(campaign, val_sets, args.out, meta, args.val_every, args.max_cpu_minutes, stop, args.stop_at)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"stopped at iteration {campaign.iteration}; {meta.get('cpu_s', 0) / 3600:.2f} CPU-hours", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
