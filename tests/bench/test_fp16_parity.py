"""bench/fp16_parity.py: float16 vs float32 PSNR of a served DnCNN on a (generated) evaluation set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import fp16_parity


def _image_set(folder: Path, channels: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        shape = (40, 48) if channels == 1 else (40, 48, 3)
        smooth = np.clip(128 + 60 * np.sin(np.arange(48) / 5) + rng.normal(0, 5, shape), 0, 255)
        Image.fromarray(smooth.astype(np.uint8)).save(folder / f"{i}.png")


def test_float16_matches_float32_on_the_committed_gray_denoiser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image_set(tmp_path / "BSD68", 1)
    assert fp16_parity.main(["--data", str(tmp_path), "--models", "dncnn-gray-s25"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# fp16_parity: torch-cpu")
    row = next(line for line in out.splitlines() if line.startswith("| dncnn-gray-s25 |"))
    db32, db16, diff = (float(v) for v in row.strip("|").split("|")[3:6])
    assert db32 > 20 and abs(diff) < 0.05 and diff == pytest.approx(db16 - db32, abs=2e-4)


def test_parity_reports_what_a_worse_half_precision_run_loses() -> None:
    """The comparison is real: a float16 run that is off by 4 levels everywhere shows it."""
    clean = np.random.default_rng(1).integers(8, 248, (32, 32), dtype=np.uint8)

    def exact(x: np.ndarray) -> np.ndarray:
        return clean[None, None].astype(np.float32) / np.float32(255)

    def off(x: np.ndarray) -> np.ndarray:
        return exact(x) + np.float32(4 / 255)

    db32, db16 = fp16_parity.parity(exact, off, [("a.png", clean)], "BSD68", 25)
    assert db32 == float("inf")
    assert db16 == pytest.approx(20 * np.log10(255 / 4), abs=0.01)


def test_the_backend_is_torch_on_a_cpu_and_ort_only_with_its_cuda_provider() -> None:
    assert fp16_parity.backend("cpu") == "torch-cpu"
    expected = "ort-cuda" if fp16_parity.CUDA in fp16_parity.ort.get_available_providers() else "torch-cuda"
    assert fp16_parity.backend("cuda") == expected
