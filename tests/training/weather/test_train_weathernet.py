"""training/weather/train.py with WeatherNet and pool data: every stage learns, clean rows are in
every batch and trained towards the photo itself, checkpoints rebuild the network, resume is exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.weather import build_network, load_student
from models.hed import HED
from models.weathernet import WeatherNet
from training.weather.data import WEATHERS, WeatherPatches
from training.weather.losses import VGGFeatures
from training.weather.pool import PairPool, write_pool
from training.weather.renderers import CLEAN
from training.weather.train import CHECKPOINT, WeatherTrainConfig, WeatherTrainer, save


pytestmark = pytest.mark.usefixtures("one_thread")

TINY = WeatherTrainConfig(
    architecture="weathernet", width=0.5, attention="dct", head="physical", data="pool",
    clean_per_batch=1, patch=32, per_weather=1, iterations=4, lr=1e-3, lr_min=1e-3, warmup=0.0,
    cr_crop=32, cr_per_weather=1, clip=1.0, seed=0,
)
TEACHER = dataclasses.replace(TINY, stage="teacher", weather="rain")
STAGE1 = dataclasses.replace(TINY, stage="stage1", cr_weight=0.1)
STAGE2 = dataclasses.replace(TINY, stage="stage2", cr_weight=0.2)
TERMS = {
    "teacher": {"loss", "l1"},
    "stage1": {"loss", "output", "projected", "reconstruction", "clean", "scr"},
    "stage2": {"loss", "l1", "hcr"},
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> PairPool:
    root = tmp_path_factory.mktemp("bsds")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / split / "0.jpg")
    write_pool(root, root / "pool", pairs=4, size=40, seed=1, workers=1)
    return PairPool(root / "pool", patch=32, seed=0)


@pytest.fixture(scope="module")
def features() -> VGGFeatures:
    torch.manual_seed(0)
    return VGGFeatures(HED(widths=(4, 8, 8, 8, 8), depths=(2, 2, 3, 3, 3)))


def _trainer(config: WeatherTrainConfig, pool: PairPool, features: VGGFeatures) -> WeatherTrainer:
    if config.stage == "teacher":
        return WeatherTrainer(config, pool)
    torch.manual_seed(1)
    teachers = [build_network(dataclasses.asdict(TINY)) for _ in WEATHERS] if config.stage == "stage1" else []
    return WeatherTrainer(config, pool, features, teachers)


def test_batches_end_with_clean_rows(pool: PairPool) -> None:
    assert STAGE1.counts() == {"rain": 1, "haze": 1, "snow": 1, CLEAN: 1}
    assert TEACHER.counts() == {"rain": 1, CLEAN: 1}
    trainer = WeatherTrainer(TEACHER, pool)
    clean, degraded = trainer.batch(3)
    assert clean.shape == degraded.shape == (2, 3, 32, 32)
    assert float((clean[1] - degraded[1]).abs().mean()) < 0.03  # clean row: camera model at most
    assert float((clean[0] - degraded[0]).abs().mean()) > 0.0


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@pytest.mark.parametrize("config", [TEACHER, STAGE1, STAGE2], ids=lambda c: c.stage)
def test_steps_on_one_batch_lower_the_loss(
    config: WeatherTrainConfig, pool: PairPool, features: VGGFeatures
) -> None:
    trainer = _trainer(config, pool, features)
    assert isinstance(trainer.model, WeatherNet)
    history = []
    for _ in range(5):
        trainer.iteration = 0  # the same batch again, with the updated weights
        history.append(trainer.step())
    for values in history:
        assert set(values) == TERMS[config.stage]
        assert all(np.isfinite(v) for v in values.values())
    assert history[-1]["loss"] < history[0]["loss"]


def test_pool_data_needs_no_images_but_clean_rows_need_the_pool(pool: PairPool) -> None:
    patches = WeatherPatches([np.zeros((40, 40, 3), np.float32)], patch=32, seed=0)
    with pytest.raises(ValueError, match="pool"):
        WeatherTrainer(dataclasses.replace(TEACHER, data="synthetic"), patches)


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_checkpoint_rebuilds_the_weathernet(
    tmp_path: Path, pool: PairPool, features: VGGFeatures
) -> None:
    trainer = _trainer(STAGE2, pool, features)
    trainer.step()
    save(trainer, tmp_path, {"history": []})
    model, meta = load_student(tmp_path / CHECKPOINT)
    assert isinstance(model, WeatherNet) and meta["config"]["architecture"] == "weathernet"
    x = torch.rand(1, 3, 32, 48)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), trainer.model(x))


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, pool: PairPool, features: VGGFeatures
) -> None:
    config = dataclasses.replace(STAGE1, lr_min=1e-5, warmup=0.5)
    straight = _trainer(config, pool, features)
    expected = [straight.step() for _ in range(4)]
    first = _trainer(config, pool, features)
    got = [first.step() for _ in range(2)]
    save(first, tmp_path, {})
    second = _trainer(config, pool, features)
    second.load_state_dict(torch.load(tmp_path / CHECKPOINT, map_location="cpu", weights_only=False))
    got += [second.step() for _ in range(2)]
    assert got == expected  # bitwise
