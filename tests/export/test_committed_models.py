"""Every model in models/onnx/manifest.json: present, hash as recorded, and equal to PyTorch.

The PyTorch side is rebuilt from the ONNX file's own initializers (``dncnn_from_onnx``), so this
runs without ../shared and proves the graph computes the DnCNN it claims to store. Edge models
(HED) are checked the same way in ``test_hed_export.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from export.dncnn import dncnn_from_onnx
from export.onnx_export import max_abs_diff, run_onnx
from restore.core.hashing import sha256_file
from restore.core.manifest import read_manifest
from export.quantize import variant_verdict

ONNX_DIR = Path(__file__).resolve().parents[2] / "models" / "onnx"
ENTRIES = read_manifest(ONNX_DIR / "manifest.json")
DENOISE = [e for e in ENTRIES if e["task"] == "denoise"]


def test_manifest_lists_models() -> None:
    assert ENTRIES, "models/onnx/manifest.json is missing or empty"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_committed_file_hash(entry: dict[str, Any]) -> None:
    path = ONNX_DIR / entry["file"]
    assert path.is_file()
    assert sha256_file(path) == entry["sha256"]


VARIANTS = [(e["name"], precision, v) for e in ENTRIES for precision, v in e.get("variants", {}).items()]


@pytest.mark.parametrize("name,precision,variant", VARIANTS, ids=[f"{n}-{p}" for n, p, _ in VARIANTS])
def test_committed_variant_hash_and_gate(name: str, precision: str, variant: dict[str, Any]) -> None:
    """A shipped variant (export.quantize ship): its file as recorded, and both measurements in the
    manifest passing the gate, so a hand-edited entry cannot ship an unmeasured model."""
    assert sha256_file(ONNX_DIR / variant["file"]) == variant["sha256"]
    assert variant_verdict(variant)[0], f"{name} {precision}: {variant_verdict(variant)[1]}"


@pytest.mark.parametrize("entry", DENOISE, ids=[e["name"] for e in DENOISE])
def test_committed_model(entry: dict[str, Any]) -> None:
    path = ONNX_DIR / entry["file"]
    assert path.is_file()
    assert sha256_file(path) == entry["sha256"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert entry["task"] == "denoise"
    model = dncnn_from_onnx(proto)
    assert model.channels == entry["channels"]
    assert model.receptive_radius == entry["overlap"]

    x = np.random.default_rng(0).random((1, entry["channels"], 37, 53), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert max_abs_diff(run_onnx(path, x), expected) <= 1e-4
