"""src/restore/core/manifest.py as the service reads it: every malformed entry is a ManifestError, the
good one a typed ModelSpec (what the start makes of it: tests/restore/service/test_main.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from restore.core.manifest import ManifestError, load_manifest

GOOD = {
    "name": "m", "task": "denoise", "file": "m.onnx", "sha256": "0" * 64, "version": "1", "channels": 1,
    "sigma": None, "overlap": 2, "multiple": 1, "default": True,
}
WRONG_SHAPES: list[Any] = [
    [],
    "models",
    {"models": "abc"},
    {"models": {"m": GOOD}},
    {"models": [1, 2]},
    {"models": [{**GOOD, "channels": "three"}]},
    {"models": [{**GOOD, "channels": [3]}]},
    {"models": [{**GOOD, "sigma": "high"}]},
    {"models": [{**GOOD, "overlap": None}]},
    {"models": [{**GOOD, "name": ["m"]}]},
    {"models": [{**GOOD, "default": "false"}]},
    {"models": [{**GOOD, "task": ["denoise"]}]},
    {"models": [{**GOOD, "provenance": "abc"}]},
    {"models": [{**GOOD, "metrics": 5}]},
    {"models": [{**GOOD, "noise": "poisson"}]},
    {"models": [{**GOOD, "sigma": -25}]},
    {"models": [{**GOOD, "multiple": 0}]},
    {"models": [{**GOOD, "overlap": 2.5}]},
    {"models": [{**GOOD, "feather": -1}]},
    {"models": [{**GOOD, "feather": 64.0}]},
    {"models": [{**GOOD, "min_tile": True}]},
    {"models": [{**GOOD, "min_tile": "1024"}]},
    {"models": [{**GOOD, "channels": True}]},
    {"models": [{**GOOD, "file": "../outside.onnx"}]},
    {"models": [{**GOOD, "file": "/etc/passwd"}]},
    {"models": [GOOD, GOOD]},
]


def _write(root: Path, document: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(document))
    return root


@pytest.mark.parametrize("document", WRONG_SHAPES, ids=lambda d: json.dumps(d)[:40])
def test_wrong_shapes_are_a_manifest_error(tmp_path: Path, document: Any) -> None:
    with pytest.raises(ManifestError):
        load_manifest(_write(tmp_path, document))


def test_the_good_entry_loads(tmp_path: Path) -> None:
    (spec,) = load_manifest(_write(tmp_path, {"models": [GOOD]}))
    assert (spec.name, spec.channels, spec.default, spec.noise) == ("m", 1, True, "gaussian")
    (camera,) = load_manifest(_write(tmp_path, {"models": [{**GOOD, "noise": "camera"}]}))
    assert camera.noise == "camera" and camera.public()["noise"] == "camera" and "noise" not in camera.extra


def test_a_model_s_tiling_needs_widen_the_service_s_and_are_shown(tmp_path: Path) -> None:
    """``feather`` and ``min_tile`` are optional (0: the service's settings decide); a model's
    measured cross-fade widens RESTORE_TILE_OVERLAP, never narrows it."""
    (plain,) = load_manifest(_write(tmp_path, {"models": [GOOD]}))
    assert (plain.feather, plain.min_tile, plain.feather_for(16)) == (0, 0, 16)
    assert "feather" not in plain.public() and "min_tile" not in plain.public()
    (wide,) = load_manifest(_write(tmp_path, {"models": [{**GOOD, "feather": 128, "min_tile": 1024}]}))
    assert (wide.feather_for(16), wide.feather_for(200), wide.min_tile) == (128, 200, 1024)
    assert wide.public()["feather"] == 128 and wide.public()["min_tile"] == 1024 and not wide.extra
