"""training/weather/train.py: schedule, every stage learns, checkpoints, exact resume, validation."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.weather import load_student
from models.hed import HED
from models.msbdn import MSBDN, MSBDNConfig
from training.weather.data import WEATHERS, WeatherPatches, degrade
from training.weather.losses import VGGFeatures
from training.weather.train import (
    CHECKPOINT,
    LOG,
    WeatherTrainConfig,
    WeatherTrainer,
    learning_rate,
    restore,
    run,
    save,
    validate,
)

TINY = WeatherTrainConfig(
    width=0.125, res_blocks=1, patch=32, per_weather=1, iterations=4, lr=1e-3, lr_min=1e-3,
    warmup=0.0, cr_crop=32, cr_per_weather=1, seed=0,
)
TEACHER = dataclasses.replace(TINY, stage="teacher", weather="haze")
STAGE1 = dataclasses.replace(TINY, stage="stage1", cr_weight=0.1)
STAGE2 = dataclasses.replace(TINY, stage="stage2", cr_weight=0.2)
TERMS = {
    "teacher": {"loss", "l1"},
    "stage1": {"loss", "output", "projected", "reconstruction", "scr"},
    "stage2": {"loss", "l1", "hcr"},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    fx, fy = rng.uniform(0.1, 0.4, 2)
    base = 0.5 + 0.3 * np.sin(fx * x) * np.cos(fy * y)
    planes = np.stack([base + 0.05 * c for c in (-1, 0, 1)], axis=-1)
    return np.clip(planes + rng.normal(0, 0.02, planes.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> WeatherPatches:
    return WeatherPatches([_image(64, 64, seed) for seed in range(3)], patch=32, seed=0)


@pytest.fixture(scope="module")
def features() -> VGGFeatures:
    torch.manual_seed(0)
    return VGGFeatures(HED(widths=(4, 8, 8, 8, 8), depths=(2, 2, 3, 3, 3)))


def _teachers() -> list[MSBDN]:
    torch.manual_seed(1)
    return [MSBDN(MSBDNConfig(width=0.125, res_blocks=1)) for _ in WEATHERS]


def _trainer(config: WeatherTrainConfig, data: WeatherPatches, features: VGGFeatures) -> WeatherTrainer:
    if config.stage == "teacher":
        return WeatherTrainer(config, data)
    teachers = _teachers() if config.stage == "stage1" else ()
    return WeatherTrainer(config, data, features, teachers)


# ------------------------------------------------------------------------------------- schedule
def test_learning_rate_warms_up_then_decays_to_lr_min() -> None:
    config = WeatherTrainConfig(iterations=100, warmup=0.1, lr=1e-3, lr_min=1e-5)
    rates = [learning_rate(config, i) for i in range(config.iterations + 1)]
    assert rates[0] == pytest.approx(1e-4)
    assert all(b > a for a, b in zip(rates[:10], rates[1:10]))  # linear warm-up over 10 steps
    assert max(rates) == pytest.approx(config.lr) and rates[9] == pytest.approx(config.lr)
    assert all(b <= a for a, b in zip(rates[9:], rates[10:]))  # monotone after the warm-up
    assert rates[-1] == pytest.approx(config.lr_min, rel=1e-9)
    assert rates[-2] - config.lr_min < 1e-3 * (config.lr - config.lr_min)
    assert min(rates) >= config.lr_min


def test_learning_rate_is_constant_when_lr_min_is_lr() -> None:
    assert {learning_rate(TINY, i) for i in range(TINY.iterations + 1)} == {TINY.lr}


# ------------------------------------------------------------------------------------- training
@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@pytest.mark.parametrize("config", [TEACHER, STAGE1, STAGE2], ids=lambda c: c.stage)
def test_steps_on_one_batch_lower_the_loss(
    config: WeatherTrainConfig, data: WeatherPatches, features: VGGFeatures
) -> None:
    trainer = _trainer(config, data, features)
    teachers = [{k: v.clone() for k, v in t.state_dict().items()} for t in trainer.teachers]
    history = []
    for _ in range(4):
        trainer.iteration = 0  # the same batch (and crop) again, with the updated weights
        history.append(trainer.step())
    assert trainer.iteration == 1
    for values in history:
        assert set(values) == TERMS[config.stage]
        assert all(np.isfinite(v) for v in values.values())
        assert values["loss"] == pytest.approx(sum(v for k, v in values.items() if k != "loss"), rel=1e-5)
    assert history[-1]["loss"] < history[0]["loss"]
    for teacher, before in zip(trainer.teachers, teachers, strict=True):  # frozen
        assert not teacher.training
        assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_a_teacher_sees_only_its_weather(data: WeatherPatches) -> None:
    trainer = WeatherTrainer(TEACHER, data)
    clean, degraded = trainer.batch(5)
    all_clean, all_degraded = data.batch(5, TINY.per_weather)
    k = WEATHERS.index("haze")
    assert torch.equal(clean, torch.from_numpy(all_clean[k : k + 1]))
    assert torch.equal(degraded, torch.from_numpy(all_degraded[k : k + 1]))


@pytest.mark.parametrize(
    "config, teachers, with_features",
    [
        (STAGE1, 2, True),
        (STAGE1, 3, False),
        (dataclasses.replace(TINY, stage="teacher", weather=None), 0, False),
        (dataclasses.replace(TINY, stage="teacher", weather="fog"), 0, False),
        (dataclasses.replace(TINY, stage="stage3"), 0, True),
        (STAGE2, 0, False),
    ],
    ids=["two-teachers", "stage1-no-features", "teacher-no-weather", "unknown-weather",
         "unknown-stage", "stage2-no-features"],
)
def test_bad_setups_are_refused(
    config: WeatherTrainConfig, teachers: int, with_features: bool,
    data: WeatherPatches, features: VGGFeatures,
) -> None:
    nets = [MSBDN(MSBDNConfig(width=0.125, res_blocks=1)) for _ in range(teachers)]
    with pytest.raises(ValueError):
        WeatherTrainer(config, data, features if with_features else None, nets)


# ------------------------------------------------------------------------- checkpoint and resume
def test_saved_checkpoint_reloads_the_same_network(
    tmp_path: Path, data: WeatherPatches, features: VGGFeatures
) -> None:
    trainer = _trainer(STAGE2, data, features)
    trainer.step()
    save(trainer, tmp_path, {"history": [{"iteration": 1, "loss": 0.5}], "command": "test"})
    assert (tmp_path / LOG).is_file()
    model, meta = load_student(tmp_path / CHECKPOINT)
    assert not model.training and model.config == STAGE2.network()
    assert meta["iteration"] == 1 and meta["config"]["stage"] == "stage2"
    assert meta["command"] == "test" and meta["history"][0]["iteration"] == 1
    assert not {"model", "optimizer", "ckt"} & set(meta)
    x = torch.rand(1, 3, 32, 48)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), trainer.model(x))


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@pytest.mark.parametrize("config", [TEACHER, STAGE1, STAGE2], ids=lambda c: c.stage)
def test_resume_reproduces_the_uninterrupted_run(
    config: WeatherTrainConfig, tmp_path: Path, data: WeatherPatches, features: VGGFeatures
) -> None:
    config = dataclasses.replace(config, lr_min=1e-5, warmup=0.5)  # lr changes every step
    straight = _trainer(config, data, features)
    expected = [straight.step() for _ in range(4)]

    first = _trainer(config, data, features)
    got = [first.step() for _ in range(2)]
    save(first, tmp_path, {})
    second = _trainer(config, data, features)
    second.load_state_dict(torch.load(tmp_path / CHECKPOINT, map_location="cpu", weights_only=False))
    assert second.iteration == 2
    got += [second.step() for _ in range(2)]
    assert got == expected  # bitwise
    for mine, theirs in zip(second.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_resume_refuses_other_settings_but_not_more_iterations(
    data: WeatherPatches,
) -> None:
    state = WeatherTrainer(TEACHER, data).state_dict()
    WeatherTrainer(dataclasses.replace(TEACHER, iterations=10), data).load_state_dict(state)
    gpu_run = {**state, "config": {**state["config"], "device": "cuda"}}
    WeatherTrainer(TEACHER, data).load_state_dict(gpu_run)  # a GPU run continues on a CPU
    with pytest.raises(ValueError, match="lr"):
        WeatherTrainer(dataclasses.replace(TEACHER, lr=1e-4), data).load_state_dict(state)


# ------------------------------------------------------------------------ restore and validate
def test_restore_pads_and_crops_an_odd_size() -> None:
    image = _image(37, 50, seed=4)
    assert np.array_equal(restore(nn.Identity(), image), image)
    torch.manual_seed(0)
    out = restore(MSBDN(MSBDNConfig(width=0.125, res_blocks=1)).eval(), image)
    assert out.shape == (37, 50, 3) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_validate_scores_each_weather_given() -> None:
    rng = np.random.default_rng(0)
    clean = [_image(37, 50, seed) for seed in (5, 6)]
    sets = {
        "rain": [(degrade(clean[0], "rain", rng), clean[0])],
        "snow": [(degrade(c, "snow", rng), c) for c in clean],
    }
    torch.manual_seed(0)
    model = MSBDN(MSBDNConfig(width=0.125, res_blocks=1)).train()
    scores = validate(model, sets)
    assert set(scores) == {"psnr_rain", "ssim_rain", "psnr_snow", "ssim_snow"}
    assert all(np.isfinite(v) for v in scores.values())
    assert all(-1.0 <= scores[f"ssim_{w}"] <= 1.0 for w in ("rain", "snow"))
    assert model.training  # its mode is given back

    perfect = validate(nn.Identity(), {"haze": [(clean[1], clean[1])]})
    assert perfect == {"psnr_haze": float("inf"), "ssim_haze": pytest.approx(1.0)}


def test_the_contrastive_term_waits_for_cr_start(data: WeatherPatches, features: VGGFeatures) -> None:
    """A residual student starts as the identity, where SCR's denominator is 0: it must wait."""
    config = dataclasses.replace(TINY, stage="stage1", residual=True, iterations=10, cr_start=0.5)
    trainer = _trainer(config, data, features)
    with torch.no_grad():
        before, after = trainer.losses(4), trainer.losses(5)
    assert float(before["scr"]) == 0.0 and float(before["output"]) > 0
    assert float(after["scr"]) > 0


def test_run_stops_at_stop_at_and_saves(tmp_path: Path, data: WeatherPatches, features: VGGFeatures) -> None:
    """``--stop-at`` ends a run early with a checkpoint while the schedule keeps its length."""
    trainer = _trainer(dataclasses.replace(TEACHER, iterations=6), data, features)
    meta = run(trainer, {}, tmp_path, {}, val_every=100, max_minutes=None, stop=threading.Event(), stop_at=2)
    assert trainer.iteration == 2 and meta["history"][-1]["iteration"] == 2
    assert load_student(tmp_path / CHECKPOINT)[1]["iteration"] == 2
