"""A tiny HED exported to ONNX with a manifest, for the tests of the tooling that reads HED files
(evaluation, quantization, benchmarks). Apart from conftest.py: it needs PyTorch, which the
service's tests never load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from export.onnx_export import export_onnx
from models.hed import HEDForInference, build_hed
from restore.core.hashing import sha256_file
from restore.core.manifest import write_manifest


def tiny_hed(onnx_dir: Path, metrics: dict[str, Any] | None = None) -> Path:
    """A randomly initialised hed-tiny exported as the manifest's ``hed-bsds500`` (the real entry's
    overlap and multiple); returns the manifest."""
    torch.manual_seed(0)
    export_onnx(HEDForInference(build_hed("hed-tiny")).eval(), onnx_dir / "hed.onnx", (1, 3, 32, 32))
    entry = {
        "name": "hed-bsds500", "task": "edges", "file": "hed.onnx",
        "sha256": sha256_file(onnx_dir / "hed.onnx"), "version": "0", "channels": 3,
        "sigma": None, "overlap": 113, "multiple": 16, "default": True,
        "provenance": {}, "metrics": metrics or {},
    }
    write_manifest(onnx_dir / "manifest.json", [entry])
    return onnx_dir / "manifest.json"
