"""What `pip install .`, `make run` and the Docker images install: the CPU ONNX Runtime unless the
host has a GPU, and never both ONNX Runtime wheels in one environment (deploy/requirements.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import REPO

REQUIREMENTS = [sys.executable, str(REPO / "deploy" / "requirements.py")]


def wheel_requirements(tmp_path: Path) -> list[Requirement]:
    """Requires-Dist of the wheel setuptools would build from this checkout (its metadata only)."""
    build = "import sys; from setuptools import build_meta as b; print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    metadata = (tmp_path / run.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    return [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines() if line.startswith("Requires-Dist:")]


def names(requirements: list[Requirement], extra: str = "") -> set[str]:
    return {r.name for r in requirements if r.marker is None or r.marker.evaluate({"extra": extra})}


def listed(*args: str) -> list[Requirement]:
    run = subprocess.run([*REQUIREMENTS, *args], capture_output=True, text=True, timeout=60, check=True)
    return [Requirement(line) for line in run.stdout.splitlines() if line]


def test_the_runtime_wheel_depends_on_the_cpu_onnxruntime(tmp_path: Path) -> None:
    requirements = wheel_requirements(tmp_path)
    runtime = names(requirements)
    assert "onnxruntime" in runtime and "onnxruntime-gpu" not in runtime
    assert {"fastapi", "httpx", "numpy"} <= runtime
    for extra in ("ray", "docs", "dev"):  # no extra brings the GPU wheel beside it
        assert "onnxruntime-gpu" not in names(requirements, extra)


def test_a_gpu_host_gets_onnxruntime_gpu_instead_with_the_same_pin() -> None:
    cpu = {r.name: r for r in listed()}
    gpu = {r.name: r for r in listed("--gpu")}
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert gpu["onnxruntime-gpu"].extras == {"cuda", "cudnn"} and gpu["onnxruntime-gpu"].specifier == cpu["onnxruntime"].specifier
    assert set(gpu) - {"onnxruntime-gpu"} == set(cpu) - {"onnxruntime"}
    dev = {r.name for r in listed("--gpu", "--extra", "dev")}  # the dev extra's own self-reference is followed
    assert {"pytest", "ray", "mkdocs", "onnxruntime-gpu"} <= dev and "onnxruntime" not in dev and "restore-service" not in dev
    pins = listed("--constraints")
    assert {r.name for r in pins} >= {"nvidia-cudnn-cu12", "nvidia-cuda-runtime-cu12"}


def test_make_run_picks_the_wheel_by_nvidia_smi(tmp_path: Path) -> None:
    def plan(*args: str, path: str = "/usr/bin:/bin") -> str:
        env = {**os.environ, "PATH": path}
        # a fresh VENV: the plan must not depend on what this checkout's .venv already holds
        return subprocess.run(["make", "-n", "run", f"VENV={tmp_path / 'venv'}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              check=True).stdout

    assert "requirements.py --gpu" not in plan() and ".runtime-cpu" in plan()  # no nvidia-smi on this PATH
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    with_gpu = plan(path=f"{tmp_path}:/usr/bin:/bin")
    assert "requirements.py --gpu" in with_gpu and "--no-deps -e ." in with_gpu and "uninstall --yes --quiet onnxruntime " in with_gpu
    assert "requirements.py --gpu" not in plan("GPU=0", path=f"{tmp_path}:/usr/bin:/bin")
