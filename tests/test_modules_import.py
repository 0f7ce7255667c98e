"""Every module of the project imports.

Tests import only what they exercise, so a name removed from one module while another still
imports it (a CLI or an evaluation script no test loads) would surface first in CI's collection or
in a user's traceback. This walks the source tree instead.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("src/restore", "models", "export", "training", "bench")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT / "src" if package.startswith("src/") else ROOT)
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__main__":  # runs the command line on import
                continue
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


MODULES = _modules()


def test_the_walk_finds_the_packages():
    assert {"restore.core", "restore.service", "export.weather", "training.weather.evaluate"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
