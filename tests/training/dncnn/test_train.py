"""training/dncnn/trainer.py and its command training/dncnn/train.py: a step lowers the loss, exact
resume, schedule, and a tiny CLI run."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.common.log import CSV_COLUMNS
from training.dncnn import train as train_dncnn
from training.dncnn import trainer as dncnn_trainer
from training.dncnn.trainer import TrainConfig, Trainer, learning_rate, load_checkpoint

TINY = TrainConfig(depth=4, features=8, batch_size=8, iterations=6, epoch_iters=3, seed=3)


def _patches(n: int = 32, size: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth random patches: something a denoiser can learn from in a few steps."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    fx, fy, phase = rng.uniform(1, 4, (3, n, 1, 1))
    images = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * x + fy * y) + phase * 6)
    return np.round(images * 255).astype(np.uint8)[:, None]


def test_one_step_lowers_the_loss() -> None:
    trainer = Trainer(TINY, _patches())
    before = trainer.train_step()
    trainer.iteration = 0  # the same batch and noise again, now with the updated weights
    after = trainer.train_step()
    assert np.isfinite(before) and after < before


def test_init_follows_the_authors() -> None:
    trainer = Trainer(TINY, _patches())
    scales = torch.cat([block.bn.weight.detach() for block in trainer.model.body])
    assert float(scales.abs().min()) >= dncnn_trainer.BN_SCALE_MIN
    assert float(scales.abs().max()) < 1.0 and bool((scales < 0).any())
    assert all(float(block.bn.bias.detach().abs().max()) == 0 for block in trainer.model.body)
    again = Trainer(TINY, _patches())  # seeded
    assert torch.equal(trainer.model.head.conv.weight, again.model.head.conv.weight)


def test_bf16_autocast_step_on_cpu() -> None:
    trainer = Trainer(dataclasses.replace(TINY, amp=True), _patches())
    losses = [trainer.train_step() for _ in range(2)]
    assert all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    patches = _patches()
    straight = Trainer(TINY, patches)
    expected = [straight.train_step() for _ in range(5)]

    first = Trainer(TINY, patches)
    head = [first.train_step() for _ in range(2)]
    dncnn_trainer.save_checkpoint(tmp_path / "last.pt", first.state_dict())
    del first
    resumed = Trainer(TINY, patches)
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    assert resumed.iteration == 2
    tail = [resumed.train_step() for _ in range(3)]

    assert head + tail == expected  # bit-identical, not merely close
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_other_settings() -> None:
    state = Trainer(TINY, _patches()).state_dict()
    other = Trainer(dataclasses.replace(TINY, lr=5e-4), _patches())
    with pytest.raises(ValueError, match="lr"):
        other.load_state_dict(state)
    longer = Trainer(dataclasses.replace(TINY, iterations=20), _patches())
    longer.load_state_dict(state)  # extending the run is allowed


def test_schedule_defaults_follow_the_paper() -> None:
    config = TrainConfig().resolve(batches_per_pass=1862)
    assert config.iterations == 50 * 1862 and config.milestones == (30 * 1862,)
    assert config.epoch_iters == 1862
    assert learning_rate(config, 0) == pytest.approx(1e-3)
    assert learning_rate(config, 30 * 1862 - 1) == pytest.approx(1e-3)
    assert learning_rate(config, 30 * 1862) == pytest.approx(1e-4)
    assert TrainConfig().model_config().depth == 17
    assert dncnn_trainer.VARIANTS["cdncnn-b"].model_config().channels == 3


def _data_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for folder, count, size in (("Train400", 3, 48), ("Set12", 2, 24)):
        (root / "denoise" / folder).mkdir(parents=True)
        for i in range(count):
            image = _patches(1, size, seed=i)[0, 0] // 2 + rng.integers(0, 60, (size, size))
            Image.fromarray(image.astype(np.uint8)).save(root / "denoise" / folder / f"{i}.png")
    return root


def test_cli_run_logs_checkpoints_and_resumes(tmp_path: Path) -> None:
    data, out = _data_folder(tmp_path / "data"), tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--depth", "3", "--features", "4",
            "--batch-size", "4", "--epoch-iters", "2", "--scales", "1", "0.9"]
    assert train_dncnn.main([*args, "--iterations", "4"]) == 0
    with open(out / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    assert all(5 < float(r["val_psnr"]) < 60 for r in rows)
    best = load_checkpoint(out / "best.pt")
    assert best["best_psnr"] == pytest.approx(max(float(r["val_psnr"]) for r in rows), abs=1e-4)

    assert train_dncnn.main([*args, "--iterations", "6", "--resume"]) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["iteration"] == 6 and len(state["history"]) == 3
    first, resumed = state["command"].split(" && ")  # the original command is kept
    assert first.endswith("--iterations 4") and resumed.endswith("--iterations 6 --resume")
    assert dncnn_trainer.config_from_dict(state["config"]).scales == (1.0, 0.9)
