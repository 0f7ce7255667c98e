# Runtime image: no compilers, no torch, no dev extra; models baked in from models/onnx/.
# BASE_IMAGE must provide python3 (>= 3.10) with pip. For the CUDA provider the onnxruntime-gpu
# wheel's CUDA/cuDNN dependencies come from the base image (e.g. an nvidia/cuda *-cudnn-runtime image).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first: a code change does not reinstall them.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY service/ service/
COPY models/onnx/ models/onnx/
RUN useradd --system --uid 10001 --home-dir /app restore && chown -R restore /app
USER restore

ENV PATH=/opt/venv/bin:$PATH RESTORE_MODELS_DIR=/app/models/onnx PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4).status == 200 else 1)"]
CMD ["python3", "-m", "service"]
