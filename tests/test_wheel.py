"""The wheel that `pip install .` builds is the runtime alone, and it works without PyTorch.

Built from this checkout, installed with pip into a fresh virtual environment (no system site
packages), next to exactly its runtime dependencies: the closure of the wheel's own Requires-Dist,
linked in from the environment running the tests (so no network is needed, and the versions are
the pinned ones). PyTorch is not in that closure, so it is absent there, and the service, the
client and the ground floor must import, build the app and answer ``--help`` all the same.
Measured: 116 s on this 2-core host with a load average of about 15 (other work running), most of
it building the wheel and starting interpreters.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import MODELS_DIR, REPO

pytestmark = pytest.mark.slow

IN_THE_VENV = """
import importlib.util, json, sys
from pathlib import Path
assert importlib.util.find_spec("torch") is None, "torch is importable in the fresh venv"
import restore, restore.core.manifest, restore.core.tiling, restore.client.cli, restore.service.__main__
from restore.service.api import web
from restore.service.app import create_app
from restore.service.settings import Settings
app = create_app(Settings(models_dir=Path(sys.argv[1])))
print(json.dumps({
    "restore": restore.__file__,
    "page": (web.PAGE_DIR / "index.html").is_file() and (web.PAGE_DIR / "assets" / "app.js").is_file(),
    "routes": sorted({route.path for route in app.state.routes if hasattr(route, "path")}),  # flat: FastAPI nests routers
    "torch": "torch" in sys.modules,
}))
"""


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    return requirement.marker is None or any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def runtime_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requirements`` need, their extras' and their own included."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(text), set[str]()) for text in requirements]
    while todo:
        requirement, _ = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found[name] = distribution = metadata.distribution(requirement.name)
        for text in distribution.requires or []:
            sub = Requirement(text)
            if _applies(sub, set(requirement.extras)):
                todo.append((sub, set()))
    return found


def link_site(distributions: dict[str, metadata.Distribution], site: Path) -> None:
    """A folder holding the top-level files and folders of exactly these distributions (symlinks)."""
    site.mkdir()
    for distribution in distributions.values():
        for file in distribution.files or []:
            top = file.parts[0]
            if top == ".." or (site / top).exists():
                continue
            (site / top).symlink_to(Path(str(distribution.locate_file(top))).resolve())


def test_the_wheel_runs_without_pytorch_in_a_fresh_venv(tmp_path: Path) -> None:
    source, wheels = tmp_path / "source", tmp_path / "dist"  # built from a copy: no build/ left in the checkout
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(wheels)],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("restore_service-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        requires = [line.split(":", 1)[1].strip() for line in archive.read(next(n for n in names if n.endswith("METADATA"))).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"restore"}, "the wheel holds the runtime package only, not the tooling"
    assert "restore/service/api/static/index.html" in names

    runtime = runtime_closure([r for r in requires if _applies(Requirement(r), set())])
    assert "torch" not in runtime and "fastapi" in runtime and "onnxruntime" in runtime  # the CPU wheel; GPU hosts swap it
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    link_site(runtime, tmp_path / "runtime-site")
    (site / "runtime-deps.pth").write_text(f"{tmp_path / 'runtime-site'}\n")

    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run = subprocess.run([python, "-c", IN_THE_VENV, str(MODELS_DIR)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=clean_env)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["restore"].startswith(str(site)), seen["restore"]  # the installed copy, not src/
    assert seen["page"] and not seen["torch"]
    assert {"/denoise", "/edges", "/derain", "/v1/models", "/readyz"} <= set(seen["routes"])
    for command in ([env_dir / "bin" / "restore", "--help"], [python, "-m", "restore.service", "--help"]):
        answer = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean_env)
        assert answer.returncode == 0 and "usage" in answer.stdout, answer.stderr
