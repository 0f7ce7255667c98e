"""``python -m restore.service``: a manifest of the wrong shape stops the start with one clear line,
never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.restore.core.test_manifest import GOOD


def _write(root: Path, document: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(document))
    return root


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@pytest.mark.parametrize("document", [[], {"models": "abc"}, {"models": [{**GOOD, "channels": "three"}]}], ids=["list", "str", "three"])
def test_the_service_refuses_to_start_with_one_line(tmp_path: Path, document: Any) -> None:
    env = {**os.environ, "RESTORE_MODELS_DIR": str(_write(tmp_path, document)), "RESTORE_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, "-m", "restore.service", "--port", "0"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert run.returncode == 1
    assert "restore: cannot start:" in run.stderr and "Traceback" not in run.stderr

