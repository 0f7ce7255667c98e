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
from restore.core.manifest import read_manifest, write_manifest
from models.dncnn import DnCNN
from export.onnx_export import export_onnx
from export import dncnn_trained

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


def _colour_data_folder(root: Path) -> Path:
    """BSDS500 images (train/val/test) whose val images include the CBSD68 ones, pixel for pixel."""
    rng = np.random.default_rng(1)
    for split, ids in {"train": ["1", "2"], "val": ["3", "4"], "test": ["5"]}.items():
        (root / "bsds500" / "images" / split).mkdir(parents=True)
        for image_id in ids:
            smooth = _patches(3, 56, seed=int(image_id))[:, 0].transpose(1, 2, 0)
            image = np.clip(smooth.astype(int) + rng.integers(-10, 10, smooth.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "bsds500" / "images" / split / f"{image_id}.png")
    (root / "denoise" / "CBSD68").mkdir(parents=True)
    for image_id in ("3", "4"):
        Image.open(root / "bsds500" / "images" / "val" / f"{image_id}.png").save(root / "denoise" / "CBSD68" / f"{image_id}.png")
    for path in (root / "bsds500" / "images").rglob("*.png"):  # bsd432_files reads the .jpg of BSDS500
        Image.open(path).save(path.with_suffix(".jpg"), quality=98)
        path.unlink()
    return root


def _exported_colour_model(path: Path) -> Path:
    torch.manual_seed(0)
    export_onnx(DnCNN(channels=3, depth=3, features=4, batch_norm=False).eval(), path, (1, 3, 16, 16))
    return path


def test_camera_noise_run_starts_from_an_exported_model_and_resumes_exactly(tmp_path: Path) -> None:
    init = _exported_colour_model(tmp_path / "start.onnx")
    config = TrainConfig(arch="cdncnn-b", depth=3, features=4, batch_size=4, iterations=4, epoch_iters=2,
                         noise="camera", batch_norm=False, init=str(init), patch_size=24)
    patches = np.repeat(_patches(16, 24), 3, axis=1)
    first = Trainer(config, patches)
    expected = dncnn_trainer.initial_weights(init)
    assert all(torch.equal(first.model.state_dict()[k], v) for k, v in expected.items())
    clean, noise = first.sampler.batch(0)
    noisy = (clean + noise).numpy()
    assert noisy.min() >= -0.5 and np.isfinite(noisy).all() and float(noise.abs().mean()) > 0
    expected_losses = [first.train_step() for _ in range(4)]

    head = Trainer(config, patches)
    losses = [head.train_step() for _ in range(2)]
    dncnn_trainer.save_checkpoint(tmp_path / "last.pt", head.state_dict())
    resumed = Trainer(config, patches)
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    losses += [resumed.train_step() for _ in range(2)]
    assert losses == expected_losses  # camera noise, JPEG included, is a function of (seed, i)


def test_cli_camera_variant_trains_validates_and_exports(tmp_path: Path) -> None:
    data, out = _colour_data_folder(tmp_path / "data"), tmp_path / "run"
    init = _exported_colour_model(tmp_path / "start.onnx")
    args = ["--variant", "cdncnn-b-camera", "--init", str(init), "--data", str(data), "--out", str(out),
            "--depth", "3", "--features", "4", "--batch-size", "4", "--patch-size", "24", "--epoch-iters", "2",
            "--scales", "1", "--max-patches", "64", "--lr", "1e-4", "--iterations", "2"]
    assert train_dncnn.main(args) == 0
    state = load_checkpoint(out / "last.pt")
    config = dncnn_trainer.config_from_dict(state["config"])
    assert (config.noise, config.batch_norm, config.init, config.train_set) == ("camera", False, str(init), "BSD432")
    assert "Poisson-Gaussian" in state["noise_description"] and 5 < state["history"][0]["val_psnr"] < 60

    onnx_dir = tmp_path / "onnx"
    write_manifest(onnx_dir / "manifest.json", [])
    assert dncnn_trained.main(["--checkpoint", str(out / "last.pt"), "--name", "tiny-camera", "--out", str(onnx_dir)]) == 0
    (entry,) = read_manifest(onnx_dir / "manifest.json")
    assert entry["channels"] == 3 and entry["sigma"] is None and entry["default"] is False
    assert "research use" in entry["provenance"]["license"]  # fine-tuned from the authors' weights
    assert "Poisson-Gaussian" in entry["provenance"]["data"] and str(init) in entry["provenance"]["data"]
    assert "gaussian_share 0.25" in entry["provenance"]["data"]

    # --blend 0: exactly the model the run started from; 0.5: halfway, recorded in the provenance
    assert dncnn_trained.main(["--checkpoint", str(out / "last.pt"), "--name", "start", "--out", str(onnx_dir),
                               "--blend", "0"]) == 0
    start = {e["name"]: e for e in read_manifest(onnx_dir / "manifest.json")}["start"]
    assert dncnn_trainer.initial_weights(onnx_dir / start["file"]).keys() == dncnn_trainer.initial_weights(init).keys()
    assert all(torch.allclose(a, b, atol=1e-3) for a, b in zip(
        dncnn_trainer.initial_weights(onnx_dir / start["file"]).values(), dncnn_trainer.initial_weights(init).values()))
    assert dncnn_trained.main(["--checkpoint", str(out / "last.pt"), "--name", "half", "--out", str(onnx_dir),
                               "--blend", "0.5"]) == 0
    half = {e["name"]: e for e in read_manifest(onnx_dir / "manifest.json")}["half"]
    assert "0.5 x these trained weights + 0.5 x" in half["provenance"]["blend"] and "--blend 0.5" in half["provenance"]["exported_by"]


def test_init_needs_the_released_layout() -> None:
    with pytest.raises(SystemExit, match="batch-norm"):
        train_dncnn.config_from_args(train_dncnn._parse_args(
            ["--data", "d", "--out", "o", "--init", "x.onnx", "--batch-norm"]))


def test_warmup_ramps_the_rate_up_linearly() -> None:
    config = TrainConfig(lr=1e-4, warmup=100, iterations=1000, milestones=(500,))
    assert learning_rate(config, 0) == pytest.approx(1e-6)
    assert learning_rate(config, 49) == pytest.approx(5e-5)
    assert learning_rate(config, 99) == learning_rate(config, 400) == pytest.approx(1e-4)
    assert learning_rate(config, 500) == pytest.approx(1e-5)
    assert learning_rate(dataclasses.replace(config, warmup=0), 0) == pytest.approx(1e-4)
