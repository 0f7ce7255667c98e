"""training/dncnn/auto_rule.py: the sigma=auto evidence table, on generated images and the committed models."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from restore.core.noise_level import NoiseEstimate
from tests.conftest import MODELS_DIR, noisy_image
from training.dncnn import auto_rule


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_table_has_every_condition_and_the_rule_s_picks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "CBSD68").mkdir()
    Image.fromarray(noisy_image(48, 48, 3, seed=1, noise=0.0)).save(tmp_path / "CBSD68" / "1.png")
    args = ["--data", str(tmp_path), "--manifest", str(MODELS_DIR / "manifest.json"), "--every", "1", "--crop", "40"]
    assert auto_rule.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| input | estimate | noisy | dncnn-color-blind |")
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in lines[2:]}
    assert list(rows) == [label for label, _ in auto_rule.CONDITIONS]
    assert rows["Gaussian 25, PNG"] == "dncnn-color-blind" and rows["Gaussian 50, JPEG 4:2:0"] == "dncnn-color-real"


def test_models_names_the_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "CBSD68").mkdir()
    Image.fromarray(noisy_image(48, 48, 3, seed=1, noise=0.0)).save(tmp_path / "CBSD68" / "1.png")
    args = ["--data", str(tmp_path), "--manifest", str(MODELS_DIR / "manifest.json"), "--every", "1", "--crop", "40",
            "--models", "dncnn-color-s25", "dncnn-color-blind"]
    assert auto_rule.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| input | estimate | noisy | dncnn-color-blind | dncnn-color-s25 | auto picks |")


def test_the_picks_follow_the_service_rule() -> None:
    entries = [{"name": "real", "sigma": None, "noise": "camera"}, {"name": "blind", "sigma": None},
               {"name": "s25", "sigma": 25}]
    assert auto_rule._picked(entries, NoiseEstimate(25.0, 0.05)) == "real"  # 4:2:0 noise: the camera model
    assert auto_rule._picked(entries, NoiseEstimate(25.0, 1.0)) == "blind"  # white noise: never the camera model
    assert auto_rule._picked(entries[1:], NoiseEstimate(25.0, 0.05)) == "s25"
    assert auto_rule._picked(entries[:1], NoiseEstimate(25.0, 1.0)) == "real"  # the only one compared
