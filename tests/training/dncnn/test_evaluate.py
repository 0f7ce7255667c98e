"""training/dncnn/evaluate.py: the protocol's pieces and a tiny end-to-end run on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.onnx_export import export_onnx
from models.dncnn import DnCNN
from restore.core.hashing import sha256_file
from restore.core.manifest import write_manifest
from training.dncnn import evaluate
from training.dncnn import camera_testset
from export.quantize import calibration_crops, quantize_model, read_variants, write_variants


def test_noise_is_seeded_per_image_not_per_run() -> None:
    clean = np.full((8, 8), 128, np.uint8)
    first = evaluate.add_noise(clean, 25, evaluate.noise_rng("BSD68", "x.png", 25))
    again = evaluate.add_noise(clean, 25, evaluate.noise_rng("BSD68", "x.png", 25))
    other = evaluate.add_noise(clean, 25, evaluate.noise_rng("BSD68", "y.png", 25))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32
    assert abs(float(np.std(first - 128 / 255)) * 255 - 25) < 8


def _identity_manifest(onnx_dir: Path, name: str, channels: int, sigma: int | None) -> Path:
    """A manifest with one identity "denoiser" (zero last conv): its PSNR is the noisy input's."""
    model = DnCNN(channels=channels, depth=3, features=4, batch_norm=False).eval()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    export_onnx(model, onnx_dir / f"{name}.onnx", (1, channels, 8, 8))
    entry = {
        "name": name, "task": "denoise", "file": f"{name}.onnx", "sha256": sha256_file(onnx_dir / f"{name}.onnx"),
        "version": "0", "channels": channels, "sigma": sigma, "overlap": 3, "multiple": 1, "default": True,
        "provenance": {}, "metrics": {},
    }
    write_manifest(onnx_dir / "manifest.json", [entry])
    return onnx_dir / "manifest.json"


def test_end_to_end_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_dir = tmp_path / "onnx"
    _identity_manifest(onnx_dir, "id", 1, 25)
    rng = np.random.default_rng(0)
    for test_set in ("BSD68", "Set12"):
        (tmp_path / "data" / test_set).mkdir(parents=True)
        for i in range(2):
            image = rng.integers(40, 216, (10, 12), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / "data" / test_set / f"{i}.png")

    evaluate.main([
        "--data", str(tmp_path / "data"), "--manifest", str(onnx_dir / "manifest.json"),
        "--write-manifest",
    ])
    assert "| id | BSD68 | 25 |" in capsys.readouterr().out
    metrics = json.loads((onnx_dir / "manifest.json").read_text())["models"][0]["metrics"]
    assert set(metrics) >= {"BSD68", "Set12", "note"}
    assert 18 < metrics["BSD68"]["25"] < 24  # noisy image at sigma 25: about 20.2 dB


def test_camera_families_are_scored_for_colour_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_dir = tmp_path / "onnx"
    _identity_manifest(onnx_dir, "id3", 3, None)
    (tmp_path / "data" / "CBSD68").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(40, 216, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / "CBSD68" / f"{i}.png")
    camera_testset.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "camera")])

    evaluate.main(["--data", str(tmp_path / "data"), "--manifest", str(onnx_dir / "manifest.json"),
                   "--camera", str(tmp_path / "camera"), "--write-manifest"])
    assert "| id3 | CBSD68 | poisson-gaussian |" in capsys.readouterr().out
    metrics = json.loads((onnx_dir / "manifest.json").read_text())["models"][0]["metrics"]
    assert set(metrics["CBSD68-camera"]) == {"gaussian25-jpeg90-420", "poisson-gaussian", "poisson-gaussian-jpeg90-420"}
    assert set(metrics["CBSD68"]) == {"15", "25", "50"}
    assert 15 < metrics["CBSD68-camera"]["gaussian25-jpeg90-420"] < 25


def test_int8_variants_are_scored_on_their_float_models_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--int8 scores each variant of variants.json on the same noisy images as its float model and
    records PSNR and delta_db there (not in the manifest); a variant of another float file is refused.
    The identity model's int8 twin keeps its float residual, so it loses nothing: delta about 0."""
    onnx_dir = tmp_path / "onnx"
    manifest = _identity_manifest(onnx_dir, "id", 1, 25)
    rng = np.random.default_rng(0)
    for test_set in ("BSD68", "Set12", "denoise/Train400"):
        (tmp_path / "data" / test_set).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(40, 216, (30, 32), dtype=np.uint8)).save(tmp_path / "data" / test_set / f"{i}.png")
    runs = tmp_path / "int8"
    quantize_model(onnx_dir / "id.onnx", runs / "id.int8.onnx", calibration_crops(tmp_path / "data", 1, 25, count=4, size=24))
    variant = {"file": "id.int8.onnx", "sha256": sha256_file(runs / "id.int8.onnx"), "float_sha256": sha256_file(onnx_dir / "id.onnx"),
               "provenance": {}, "metrics": {}}
    write_variants(runs, {"id": variant})

    evaluate.main(["--data", str(tmp_path / "data"), "--manifest", str(manifest), "--int8", str(runs)])
    assert "int8 - float32 = " in capsys.readouterr().out
    measured = read_variants(runs)["id"]["metrics"]
    assert set(measured["delta_db"]) == {"BSD68", "Set12"} and 18 < measured["BSD68"]["25"] < 24
    assert all(abs(v) < 0.01 for cells in measured["delta_db"].values() for v in cells.values())
    assert json.loads(manifest.read_text())["models"][0]["metrics"] == {}  # the manifest is ship's business

    write_variants(runs, {"id": {**variant, "float_sha256": "an older export"}})
    with pytest.raises(SystemExit, match="another float file"):
        evaluate.main(["--data", str(tmp_path / "data"), "--manifest", str(manifest), "--int8", str(runs)])
