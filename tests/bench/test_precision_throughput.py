"""bench/precision_throughput.py: times both files of a model and records the figures export.quantize ship reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import precision_throughput
from export.quantize import quantize_model, read_variants, variant_verdict, write_variants
from restore.core.hashing import sha256_file
from tests.tiny_hed import tiny_hed

FLOAT = precision_throughput.MODELS / "dncnn-gray-s25.onnx"


def test_write_records_both_speeds_for_ship(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    crops = [rng.random((1, 24, 24), dtype=np.float32) for _ in range(2)]
    quantize_model(FLOAT, tmp_path / "dncnn-gray-s25.int8.onnx", crops)
    write_variants(tmp_path, {"dncnn-gray-s25": {
        "file": "dncnn-gray-s25.int8.onnx", "sha256": sha256_file(tmp_path / "dncnn-gray-s25.int8.onnx"),
        "float_sha256": sha256_file(FLOAT), "provenance": {}, "metrics": {},
    }})
    assert precision_throughput.main(["--int8", str(tmp_path), "--size", "32", "--repeats", "1", "--write"]) == 0
    speed = read_variants(tmp_path)["dncnn-gray-s25"]["metrics"]["speed"]
    assert speed["float32_mp_per_s"] > 0 and speed["int8_mp_per_s"] > 0
    assert abs(speed["speedup"] / (speed["int8_mp_per_s"] / speed["float32_mp_per_s"]) - 1) < 0.1  # rounded figures
    assert speed["size"] == 32 and "--write" in speed["command"]
    assert variant_verdict(read_variants(tmp_path)["dncnn-gray-s25"])[1].startswith("quality not measured")


def test_write_records_the_speed_of_a_hed_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HED (3 channels, six output maps) timed as a denoiser is: both files, the speed ship reads."""
    models, out = tmp_path / "models", tmp_path / "int8"
    tiny_hed(models)
    rng = np.random.default_rng(0)
    crops = [rng.random((3, 32, 32), dtype=np.float32)]
    quantize_model(models / "hed.onnx", out / "hed-bsds500.int8.onnx", crops, keep_float=())
    write_variants(out, {"hed-bsds500": {
        "file": "hed-bsds500.int8.onnx", "sha256": sha256_file(out / "hed-bsds500.int8.onnx"),
        "float_sha256": sha256_file(models / "hed.onnx"), "provenance": {},
        "metrics": {"delta_ods": {"33": -0.001}, "images": 200, "limit": None},
    }})
    monkeypatch.setattr(precision_throughput, "MODELS", models)
    assert precision_throughput.main(["--int8", str(out), "--size", "48", "--repeats", "1", "--write"]) == 0
    metrics = read_variants(out)["hed-bsds500"]["metrics"]
    assert metrics["speed"]["float32_mp_per_s"] > 0 and metrics["speed"]["int8_mp_per_s"] > 0
    assert metrics["speed"]["size"] == 48 and metrics["delta_ods"] == {"33": -0.001}  # merged, not replaced
    ok, why = variant_verdict(read_variants(out)["hed-bsds500"])
    assert ("faster" in why) and ok is (metrics["speed"]["speedup"] >= 1.5)
