"""The documentation site builds with `mkdocs build --strict` (no broken link, no page left out of
nav), and its generated pages say what the code does: every setting, every route."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from restore.service.settings import Settings
from tests.conftest import REPO

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("material", reason="the docs extra is not installed (pip install -e '.[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_the_configuration_page_lists_every_setting_with_its_description(site: Path) -> None:
    page = (site / "configuration" / "index.html").read_text()
    for name, field in Settings.model_fields.items():
        assert f"RESTORE_{name.upper()}" in page
        assert field.description, f"{name} has no description for the configuration page"


def test_the_api_reference_lists_every_route_of_the_schema(site: Path) -> None:
    page = (site / "api-reference" / "index.html").read_text()
    schema = json.loads((site / "openapi.json").read_text())
    for path, operations in schema["paths"].items():
        for method in operations:
            assert re.search(rf"{method.upper()} {re.escape(path)}(?![\w/])", page), (method, path)
    assert "Experimental" in page  # the weather routes' status, with the manifest's gains
