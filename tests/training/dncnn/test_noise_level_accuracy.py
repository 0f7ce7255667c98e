"""training/dncnn/noise_level_accuracy.py: the accuracy table of the sigma=auto estimator, on generated sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import noisy_image
from training.dncnn import noise_level_accuracy


def test_table_reports_luma_per_channel_and_chroma(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for folder, channels in (("Set12", 1), ("CBSD68", 3)):
        (tmp_path / folder).mkdir()
        for i in range(2):
            image = noisy_image(80, 96, channels, seed=i, noise=0.0)
            Image.fromarray(image[:, :, 0] if channels == 1 else image).save(tmp_path / folder / f"{i}.png")
    assert noise_level_accuracy.main(["--data", str(tmp_path), "--sigmas", "25"]) == 0
    table = capsys.readouterr().out.split("\n\n")[-1]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in table.splitlines()[2:]}
    assert set(rows) == {
        ("Set12", "clean", ""), ("Set12", "Gaussian, 8 bit", "25"), ("CBSD68", "clean", ""),
        ("CBSD68", "Gaussian, 8 bit", "25"), ("CBSD68", "Gaussian, JPEG q90 4:2:0", "25"),
    }
    gray = rows[("Set12", "Gaussian, 8 bit", "25")].split("|")
    assert abs(float(gray[4]) - 25) < 2.5 and gray[8].strip() == ""  # no per-channel column for gray
    jpeg = rows[("CBSD68", "Gaussian, JPEG q90 4:2:0", "25")].split("|")
    assert abs(float(jpeg[4]) - 25) < 3 and float(jpeg[8]) < 21  # luma holds, per channel reads low
    low, _, high = jpeg[10].strip().partition(" to ")
    assert float(high) < 0.25 <= float(rows[("CBSD68", "Gaussian, 8 bit", "25")].split("|")[10].split(" to ")[0])
    assert np.isfinite(float(jpeg[11]))
