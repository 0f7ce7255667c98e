"""The runtime requirements for a CPU or a GPU host, from pyproject.toml's [project].dependencies.

pyproject.toml names the CPU wheel, ``onnxruntime``, so ``pip install .`` on a host without a GPU
gets a 17 MB runtime instead of ``onnxruntime-gpu`` (439 MB) and no CUDA wheels. A GPU host needs
``onnxruntime-gpu`` *instead*: ONNX Runtime's docs say to install only one of the two in an
environment (both own the ``onnxruntime`` package, so whichever pip writes last wins), and an extra
can only add a requirement, never drop one. So `make run` on a host where nvidia-smi sees a GPU, and
the GPU Docker image, install this list and then the project with ``--no-deps``:

    python3 deploy/requirements.py --gpu > requirements.txt     # onnxruntime-gpu[cuda,cudnn]==<pin>
                                                                # (--extra dev: and the dev extra's)
    python3 deploy/requirements.py --gpu --constraints > c.txt  # the CUDA 12.8 / cuDNN 9.10 wheels
    pip install -r requirements.txt -c c.txt && pip install --no-deps .

Standard library only (tomllib: Python >= 3.11), so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: The CUDA 12 and cuDNN 9 user-space wheels for onnxruntime-gpu 1.26.0 (built with CUDA 12.8 and
#: cuDNN 9): held to CUDA 12.8, and to cuDNN 9.10, the last cuDNN 9 whose CUDA 12 build still has
#: Pascal/Volta kernels (later ones need compute capability 7.5). See the Dockerfile.
CUDA_PINS = (
    "nvidia-cuda-runtime-cu12==12.8.*", "nvidia-cuda-nvrtc-cu12==12.8.*", "nvidia-nvjitlink-cu12==12.8.*",
    "nvidia-cublas-cu12==12.8.*", "nvidia-cufft-cu12==11.3.3.*", "nvidia-curand-cu12==10.3.9.*",
    "nvidia-cudnn-cu12==9.10.*",
)
_ORT = re.compile(r"^onnxruntime(?=\s*([\[=<>~!;]|$))")


def runtime_requirements(pyproject: Path = PYPROJECT, extras: tuple[str, ...] = ()) -> list[str]:
    """[project].dependencies, plus those of ``extras`` (an extra naming the project itself, such as
    ``restore-service[ray,docs]``, is followed rather than listed)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    requirements, pending, seen = list(project["dependencies"]), list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise ValueError(f"pyproject.toml has no extra {extra!r}; it has {sorted(optional)}")
        seen.add(extra)
        for requirement in optional[extra]:
            own = re.match(re.escape(project["name"]) + r"\[([^\]]*)\]$", requirement)
            if own:
                pending += [e.strip() for e in own.group(1).split(",")]
            else:
                requirements.append(requirement)
    return requirements


def for_device(requirements: list[str], gpu: bool, extras: str = "cuda,cudnn", onnxruntime: str = "") -> list[str]:
    """``requirements`` with the CPU onnxruntime swapped for onnxruntime-gpu (its ``extras``, same
    pin) when ``gpu``; ``onnxruntime`` replaces that requirement whole when given."""
    if not any(_ORT.match(r) for r in requirements):
        raise ValueError("pyproject.toml has no onnxruntime requirement to swap")
    if not gpu:
        return [onnxruntime if onnxruntime and _ORT.match(r) else r for r in requirements]
    name = f"onnxruntime-gpu[{extras}]" if extras else "onnxruntime-gpu"
    return [(onnxruntime or _ORT.sub(name, r)) if _ORT.match(r) else r for r in requirements]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="onnxruntime-gpu instead of onnxruntime")
    parser.add_argument("--extras", default="cuda,cudnn",
                        help="onnxruntime-gpu's extras (default cuda,cudnn: CUDA and cuDNN from NVIDIA's wheels; "
                        "'' when the base image has them)")
    parser.add_argument("--onnxruntime", default="", help="replace the ONNX Runtime requirement whole, e.g. "
                        "'onnxruntime-gpu[cuda,cudnn]==1.31.1'")
    parser.add_argument("--extra", action="append", default=[], help="add an extra's requirements (dev, ray, docs)")
    parser.add_argument("--constraints", action="store_true", help="print the CUDA wheels' pins instead")
    args = parser.parse_args(argv)
    wanted = runtime_requirements(extras=tuple(args.extra))
    lines = CUDA_PINS if args.constraints else for_device(wanted, args.gpu, args.extras, args.onnxruntime)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
