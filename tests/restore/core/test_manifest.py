"""A manifest of the wrong shape stops the start with one clear line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from restore.core.manifest import ManifestError, load_manifest
from tests.conftest import REPO

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


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@pytest.mark.parametrize("document", [[], {"models": "abc"}, {"models": [{**GOOD, "channels": "three"}]}], ids=["list", "str", "three"])
def test_the_service_refuses_to_start_with_one_line(tmp_path: Path, document: Any) -> None:
    env = {**os.environ, "RESTORE_MODELS_DIR": str(_write(tmp_path, document)), "RESTORE_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, "-m", "restore.service", "--port", "0"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert run.returncode == 1
    assert "restore: cannot start:" in run.stderr and "Traceback" not in run.stderr

