"""bench/gpu_check.py --dry-run: the GPU check runs end to end on a CPU (no GPU is lent to CI)."""

from __future__ import annotations

import onnx
import pytest

from bench import gpu_check


def test_flops_per_pixel_of_dncnn_are_its_convolutions() -> None:
    """dncnn-gray-s25: 17 3x3 convolutions, 1->64, 15 x 64->64, 64->1: 2 x 9 x 64 x (1 + 15 x 64 + 1) MAC."""
    model = onnx.load(str(gpu_check.MODELS / "dncnn-gray-s25.onnx"))
    assert gpu_check.conv_flops_per_pixel(model, 1) == pytest.approx(2 * 9 * 64 * (1 + 15 * 64 + 1))


def test_peak_is_looked_up_by_gpu_name() -> None:
    assert gpu_check.peak_for("NVIDIA H200") == 989.0 and gpu_check.peak_for("Tesla T4") == 65.0
    assert gpu_check.peak_for("some future GPU") is None


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_dry_run_measures_every_precision_and_batch_and_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--dry-run", "--models", "dncnn-gray-s25", "--e2e-model", "dncnn-gray-s25"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| dncnn-gray-s25 |")]
    assert [tuple(cell.strip() for cell in row.split("|")[2:4]) for row in rows] == [
        (p, str(b)) for p in ("float32", "float16") for b in gpu_check.BATCHES
    ]
    assert "ort-cpu (dry run)" in out and "| 2 concurrent clients" in out and "| one " in out
