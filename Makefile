# `make run` serves; `make test` runs the fast suite (minutes), `make test-all` everything (what
# .ci/run runs: 25+ minutes on 2 cores); `make lint` checks the imports; `make docs` builds the
# documentation site into site/. Each creates .venv on first use; a stamp file re-installs only when
# pyproject.toml changes.
#
# ONNX Runtime: the CPU wheel (onnxruntime) unless nvidia-smi lists a GPU, then onnxruntime-gpu
# with NVIDIA CUDA/cuDNN wheels instead (deploy/requirements.py says why it is a swap, not an
# extra). GPU=0 or GPU=1 overrides the detection; switching reinstalls ONNX Runtime only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 0.0.0.0
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
DEVICE := $(if $(filter 1,$(GPU)),gpu,cpu)
# The fast suite leaves out what needs minutes, a browser, Docker, a Ray cluster or a live server
# (tests/conftest.py gives every test under tests/e2e the e2e mark).
FAST := not (slow or e2e or browser or docker or ray)

.PHONY: run test test-all lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# install(extras): the project with those extras, and the ONNX Runtime wheel for this host.
ifeq ($(DEVICE),gpu)
define install
	$(BIN)/pip uninstall --yes --quiet onnxruntime 2>/dev/null || true
	$(BIN)/python deploy/requirements.py --gpu $(foreach e,$(1),--extra $(e)) > $(VENV)/requirements.txt
	$(BIN)/python deploy/requirements.py --constraints > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -r $(VENV)/requirements.txt -c $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
endef
else
define install
	$(BIN)/pip uninstall --yes --quiet onnxruntime-gpu 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.$(if $(1),[$(1)])'
endef
endif

$(VENV)/.runtime-$(DEVICE): pyproject.toml deploy/requirements.py | $(BIN)/python
	$(call install,)
	rm -f $(VENV)/.runtime-* $(VENV)/.dev-*
	touch $@

$(VENV)/.dev-$(DEVICE): pyproject.toml deploy/requirements.py | $(BIN)/python
	$(call install,dev)
	rm -f $(VENV)/.runtime-* $(VENV)/.dev-*
	touch $@ $(VENV)/.runtime-$(DEVICE)

# The service logs one JSON line per event; open the page once it logs "ready" (with the URL).
run: $(VENV)/.runtime-$(DEVICE)
	$(BIN)/python -m restore.service --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-$(DEVICE)
	$(BIN)/python -m pytest -m '$(FAST)'

test-all: $(VENV)/.dev-$(DEVICE)
	$(BIN)/python -m pytest
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs: $(VENV)/.dev-$(DEVICE)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Arrows you can see: no function-local imports of our modules (ruff PLC0415), and the layers,
# floors and no-circle contracts of pyproject.toml's [tool.importlinter] (docs/architecture.md).
lint: $(VENV)/.dev-$(DEVICE)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache site
