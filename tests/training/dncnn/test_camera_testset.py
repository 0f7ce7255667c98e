"""training/dncnn/camera_testset.py: the realistic CBSD68 set is deterministic, checkable and readable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import noisy_image
from training.dncnn import camera_testset
from training.dncnn.camera_noise import TEST_FAMILIES


def _cbsd68(root: Path) -> Path:
    folder = root / "CBSD68"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("101085", "3096")):
        Image.fromarray(noisy_image(40, 56, 3, seed=seed, noise=0.0)).save(folder / f"{name}.png")
    return root


def test_written_once_checked_and_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = _cbsd68(tmp_path / "data"), tmp_path / "CBSD68-camera"
    assert camera_testset.main(["--data", str(data), "--out", str(out)]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) == 2 * len(TEST_FAMILIES) + 1 and camera_testset.SUMS_NAME in files
    assert "gaussian25-jpeg90-420/101085.jpg" in files and "poisson-gaussian/3096.png" in files

    assert camera_testset.main(["--data", str(data), "--out", str(out), "--check"]) == 0  # same bytes again
    assert "files match" in capsys.readouterr().out
    (out / "poisson-gaussian" / "3096.png").write_bytes(b"changed")
    with pytest.raises(SystemExit, match="differs"):
        camera_testset.main(["--data", str(data), "--out", str(out), "--check"])

    noisy = camera_testset.load_family(out, "gaussian25-jpeg90-420")
    clean = np.asarray(Image.open(data / "CBSD68" / "101085.png"))
    assert set(noisy) == {"101085", "3096"} and noisy["101085"].shape == clean.shape
    assert 15 < np.std(noisy["101085"].astype(float) - clean) < 30  # sigma 25, then JPEG


def test_each_image_and_family_has_its_own_noise() -> None:
    clean = np.full((32, 32, 3), 128, np.uint8)
    family = TEST_FAMILIES[1]
    assert camera_testset.render(family, "a.png", clean) == camera_testset.render(family, "a.png", clean)
    assert camera_testset.render(family, "a.png", clean) != camera_testset.render(family, "b.png", clean)
    assert camera_testset.render(TEST_FAMILIES[0], "a.png", clean) != camera_testset.render(TEST_FAMILIES[2], "a.png", clean)
