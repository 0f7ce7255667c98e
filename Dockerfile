# Runtime image for the restore service: no compilers, no PyTorch, no dev extra; the models are
# baked in from models/onnx/; one uvicorn worker (the in-process batcher owns the device).
#
#   docker build -t restore:latest .                      # GPU-capable image (CPU works too)
#   docker build --build-arg BASE_IMAGE=my/base:tag .     # any base with python3 >= 3.11 + venv,
#                                                         # or a Debian/Ubuntu one with apt
#
# GPU: onnxruntime-gpu (pinned in pyproject.toml; 1.26.0 is built for CUDA 12.8 + cuDNN 9, with
# kernels for sm_60/70/75/80/86/90 and PTX for compute_90) is installed with its [cuda,cudnn]
# extras, so the CUDA 12 and cuDNN 9 user-space libraries come from NVIDIA's pip wheels and the base
# image needs no CUDA. CUDA_PINS holds them to the CUDA 12.8 release (the toolkit ORT was built
# with) and cuDNN 9.10 (the last cuDNN 9 whose CUDA 12 build still has Pascal/Volta kernels; later
# ones need compute capability 7.5). Through CUDA minor-version compatibility they run on any
# driver >= 525.60.13 (the CUDA 12.0 minimum); Blackwell GPUs need >= 570.26 (CUDA 12.8's). The
# driver itself (libcuda) is mounted in by the NVIDIA Container Toolkit at run time.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Stage 1: python, a virtual environment and the unprivileged user. A base without python3/venv
# gets them from apt (e.g. nvidia/cuda or plain debian/ubuntu images); no compilers either way.
FROM ${BASE_IMAGE} AS runtime-base
RUN set -eu; \
    if ! python3 -m venv /opt/venv >/dev/null 2>&1; then \
        rm -rf /opt/venv; \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
        python3 -m venv /opt/venv; \
    fi; \
    /opt/venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), "BASE_IMAGE needs python3 >= 3.11"'; \
    useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin restore
WORKDIR /app

# Stage 2: the requirement list, from pyproject.toml's [project].dependencies only (not the project,
# not the dev extra). Stage 3 copies just this list, so editing pyproject.toml elsewhere (or any
# code or model) does not reinstall the dependencies.
#   ORT_EXTRAS   extras for onnxruntime-gpu: "cuda,cudnn" bundles CUDA/cuDNN; "" relies on the base
#                image for them (e.g. an nvidia/cuda:12.8.x-cudnn-runtime base).
#   CUDA_PINS    constraints for those wheels (pip ignores the ones for packages it does not install).
#   ONNXRUNTIME  replaces the onnxruntime-gpu requirement, e.g. "onnxruntime-gpu[cuda,cudnn]==1.31.1"
#                (CUDA 13: driver >= 580, compute capability >= 7.5; the CUDA 12 pins below do not
#                apply to its nvidia-* wheels); empty keeps pyproject.toml's pin.
FROM runtime-base AS requirements
ARG ORT_EXTRAS=cuda,cudnn
ARG CUDA_PINS="nvidia-cuda-runtime-cu12==12.8.* nvidia-cuda-nvrtc-cu12==12.8.* nvidia-nvjitlink-cu12==12.8.* nvidia-cublas-cu12==12.8.* nvidia-cufft-cu12==11.3.3.* nvidia-curand-cu12==10.3.9.* nvidia-cudnn-cu12==9.10.*"
ARG ONNXRUNTIME=
COPY pyproject.toml /tmp/pyproject.toml
RUN set -euf; \
    /opt/venv/bin/python -c 'import os, re, tomllib; \
deps = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]; \
ort, extras = os.environ["ONNXRUNTIME"], os.environ["ORT_EXTRAS"]; \
is_ort = lambda d: re.match(r"onnxruntime-gpu\s*([\[=<>~!;]|$)", d); \
sub = lambda d: ort or (re.sub(r"^onnxruntime-gpu", "onnxruntime-gpu[%s]" % extras, d) if extras else d); \
print("\n".join(sub(d) if is_ort(d) else d for d in deps))' > /requirements.txt; \
    printf '%s\n' ${CUDA_PINS} > /constraints.txt

# Stage 3: the runtime image. The CUDA/cuDNN wheels' lib folders go into the loader's path
# (ld.so.conf.d), for libonnxruntime_providers_cuda.so's dependencies and cuDNN's dlopen.
FROM runtime-base
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY --from=requirements /requirements.txt /constraints.txt /tmp/
RUN set -eu; \
    cat /tmp/requirements.txt; \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/pip install -r /tmp/requirements.txt -c /tmp/constraints.txt; \
    find /opt/venv -path '*/site-packages/nvidia/*' -type d -name lib | sort > /etc/ld.so.conf.d/onnxruntime-cuda.conf; \
    ldconfig; \
    rm -f /tmp/requirements.txt /tmp/constraints.txt

COPY models/onnx/ models/onnx/
# The package as a plain folder beside the models: `python3 -m restore.service` finds it in /app.
COPY src/restore/__init__.py restore/__init__.py
COPY src/restore/core/ restore/core/
COPY src/restore/service/ restore/service/

# ORT_DISABLE_TELEMETRY: no usage telemetry from ONNX Runtime (1.31 would also try to write a
# device ID under the read-only home); NVIDIA_DRIVER_CAPABILITIES: what the toolkit mounts in.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RESTORE_MODELS_DIR=/app/models/onnx \
    PORT=8000 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ORT_DISABLE_TELEMETRY=1
USER restore
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4).status == 200 else 1)"]
# One process, one worker; logs (JSON lines) on stdout, stderr folded in.
CMD ["sh", "-c", "exec python3 -m restore.service 2>&1"]
