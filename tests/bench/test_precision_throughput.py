"""bench/precision_throughput.py: times both files of a model and records the figures export.quantize ship reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import precision_throughput
from export.onnx_export import sha256_file
from export.quantize import quantize_model, read_variants, variant_verdict, write_variants

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
