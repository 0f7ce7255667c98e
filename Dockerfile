# Runtime image for the restore service: no compilers, no PyTorch, no dev extra; the models are
# baked in from models/onnx/; one uvicorn worker (the in-process batcher owns the device); the
# `restore` command is on PATH.
#
#   docker build -t restore:latest .                       # GPU image (onnxruntime-gpu + CUDA wheels; CPU works too)
#   docker build --build-arg DEVICE=cpu -t restore:cpu .   # CPU image: the CPU onnxruntime, no CUDA wheels
#   docker build --build-arg BASE_IMAGE=my/base:tag .      # any base with python3 >= 3.11 + venv,
#                                                          # or a Debian/Ubuntu one with apt
#
# GPU (DEVICE=gpu, the default): onnxruntime-gpu (pyproject.toml pins the CPU onnxruntime; the
# requirement is swapped by deploy/requirements.py --gpu: 1.26.0 is built for CUDA 12.8 + cuDNN 9,
# with kernels for sm_60/70/75/80/86/90 and PTX for compute_90) is installed with its [cuda,cudnn]
# extras, so the CUDA 12 and cuDNN 9 user-space libraries come from NVIDIA's pip wheels and the base
# image needs no CUDA. deploy/requirements.py --constraints holds them to the CUDA 12.8 release (the
# toolkit ORT was built with) and cuDNN 9.10 (the last cuDNN 9 whose CUDA 12 build still has
# Pascal/Volta kernels; later ones need compute capability 7.5). Through CUDA minor-version
# compatibility they run on any driver >= 525.60.13 (the CUDA 12.0 minimum); Blackwell GPUs need
# >= 570.26 (CUDA 12.8's). The driver itself (libcuda) is mounted in by the NVIDIA Container
# Toolkit at run time.
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
# not the dev extra), by deploy/requirements.py. Stage 3 copies just this list, so editing
# pyproject.toml elsewhere (or any code or model) does not reinstall the dependencies.
#   DEVICE       gpu: onnxruntime-gpu instead of onnxruntime (ONNX Runtime's docs: never both in one
#                environment); cpu: pyproject.toml's list as it is, no CUDA wheels.
#   ORT_EXTRAS   extras for onnxruntime-gpu: "cuda,cudnn" bundles CUDA/cuDNN; "" relies on the base
#                image for them (e.g. an nvidia/cuda:12.8.x-cudnn-runtime base).
#   CUDA_PINS    constraints for those wheels (pip ignores the ones for packages it does not
#                install); empty: deploy/requirements.py's (CUDA 12.8, cuDNN 9.10).
#   ONNXRUNTIME  replaces the ONNX Runtime requirement, e.g. "onnxruntime-gpu[cuda,cudnn]==1.31.1"
#                (CUDA 13: driver >= 580, compute capability >= 7.5; the CUDA 12 pins do not apply to
#                its nvidia-* wheels); empty keeps pyproject.toml's pin.
FROM runtime-base AS requirements
ARG DEVICE=gpu
ARG ORT_EXTRAS=cuda,cudnn
ARG CUDA_PINS=
ARG ONNXRUNTIME=
COPY pyproject.toml /tmp/build/pyproject.toml
COPY deploy/requirements.py /tmp/build/deploy/requirements.py
RUN set -euf; \
    case "$DEVICE" in \
        gpu) /opt/venv/bin/python /tmp/build/deploy/requirements.py --gpu --extras "$ORT_EXTRAS" --onnxruntime "$ONNXRUNTIME" > /requirements.txt; \
             if [ -n "$CUDA_PINS" ]; then printf '%s\n' ${CUDA_PINS} > /constraints.txt; \
             else /opt/venv/bin/python /tmp/build/deploy/requirements.py --constraints > /constraints.txt; fi ;; \
        cpu) /opt/venv/bin/python /tmp/build/deploy/requirements.py --onnxruntime "$ONNXRUNTIME" > /requirements.txt; \
             : > /constraints.txt ;; \
        *) echo "DEVICE must be gpu or cpu, not '$DEVICE'" >&2; exit 1 ;; \
    esac

# Stage 3: the runtime image. The CUDA/cuDNN wheels' lib folders (GPU image) go into the loader's
# path (ld.so.conf.d), for libonnxruntime_providers_cuda.so's dependencies and cuDNN's dlopen.
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
COPY src/restore/client/ restore/client/
# The `restore` command (what pip's console script for restore.client.cli:main would be; no build
# step); PYTHONPATH=/app below lets it import the package from anywhere.
RUN printf '%s\n' '#!/opt/venv/bin/python' 'import sys' 'from restore.client.cli import main' 'sys.exit(main())' \
        > /opt/venv/bin/restore && chmod 755 /opt/venv/bin/restore

# ORT_DISABLE_TELEMETRY: no usage telemetry from ONNX Runtime (1.31 would also try to write a
# device ID under the read-only home); NVIDIA_DRIVER_CAPABILITIES: what the toolkit mounts in.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
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
