"""Static checks run inside the built image by tests/e2e/docker.sh (not a pytest module):

    docker run --rm -i -e IMAGE_DEVICE=gpu|cpu --entrypoint python3 IMAGE - < tests/e2e/image_check.py

Runs as the image's user, without a GPU. Checks that the user is not root, that no compiler, PyTorch
or dev tool is installed, and that the `restore` command runs. The GPU image (IMAGE_DEVICE=gpu):
onnxruntime-gpu offers the CUDA execution provider, every library its CUDA provider links against
resolves, except libcuda.so.1 (the driver, which the NVIDIA Container Toolkit mounts in on a GPU
host), and cuDNN resolves through the loader's cache. The CPU image (IMAGE_DEVICE=cpu): the CPU
onnxruntime and not one NVIDIA wheel.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort

failures = []


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


check(os.getuid() != 0, f"runs as uid {os.getuid()} (not root)")
compilers = [c for c in ("gcc", "cc", "g++", "c++", "clang", "nvcc") if shutil.which(c)]
check(not compilers, f"no compilers on PATH {compilers or ''}")
# httpx is not on this list: it is a runtime dependency (restore.client, the `restore` command), so the
# image installs it with the rest of [project].dependencies.
dev = [m for m in ("torch", "pytest", "onnx", "scipy", "h5py", "skimage", "schemathesis", "playwright", "ray") if importlib.util.find_spec(m)]
check(not dev, f"no dev-extra packages {dev or ''}")
try:
    from onnxruntime.capi.build_and_package_info import cuda_version
except ImportError:
    cuda_version = "?"
print(f"  python {sys.version.split()[0]}, onnxruntime {ort.__version__} ({ort.get_device()}), built for CUDA {cuda_version}")
command = subprocess.run(["restore", "--help"], capture_output=True, text=True)
check(command.returncode == 0 and "usage: restore" in command.stdout, f"the restore command runs ({shutil.which('restore')})")
if os.environ.get("IMAGE_DEVICE", "gpu") == "cpu":
    wheels = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
    check("onnxruntime" in wheels and "onnxruntime-gpu" not in wheels, "the CPU onnxruntime, not onnxruntime-gpu")
    nvidia = [w for w in wheels if w.lower().startswith("nvidia-")]
    check(not nvidia, f"no NVIDIA wheels {nvidia or ''}")
    print("image checks passed" if not failures else f"{len(failures)} image check(s) failed")
    sys.exit(1 if failures else 0)
check("CUDAExecutionProvider" in ort.get_available_providers(), f"providers {ort.get_available_providers()}")

lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
if lib.is_file():
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    missing = sorted({line.split()[0] for line in out.splitlines() if "not found" in line})
    check(set(missing) <= {"libcuda.so.1"}, f"CUDA provider's unresolved libraries: {missing} (at most libcuda.so.1, the driver)")
    cuda_libs = sorted({line.split()[0] for line in out.splitlines() if "=> /" in line and "nvidia" in line})
    print(f"  resolved from the CUDA wheels: {' '.join(cuda_libs)}")
else:
    check(False, f"{lib} is missing")
cudnn = ctypes.util.find_library("cudnn")
check(cudnn is not None, f"cuDNN in the loader's cache: {cudnn}")

print("image checks passed" if not failures else f"{len(failures)} image check(s) failed")
sys.exit(1 if failures else 0)
