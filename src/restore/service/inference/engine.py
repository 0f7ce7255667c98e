"""Runs a batch of tiles through one model. Knows nothing about HTTP, images or queues.

``Engine`` is the small interface the scheduler depends on; ``OrtEngine`` implements it with one
ONNX Runtime session, and the tests use a numpy fake with a known receptive field.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from restore.core.types import Batch
from restore.service.errors import InferenceFailed, StartupError
from restore.service.settings import Settings
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Engine(Protocol):
    """What the scheduler needs from a model runtime."""

    @property
    def provider(self) -> str: ...

    def infer(self, batch: Batch, condition: Batch | None = None) -> Batch:
        """NCHW float32 in, NCHW float32 out, same height and width; must be thread-safe.
        ``condition``: a conditioned model's ``(N, K)`` one-hot rows, one per image (the weather
        model's label per tile); ``None`` for the others."""
        ...


def available_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup v2/v1 CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota else count)


def _cgroup_quota() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0:
            return math.ceil(quota_us / period_us)
    except (OSError, ValueError):
        pass
    return None


def gpu_visible() -> bool:
    """True when the NVIDIA driver exposes a device to this process (container or host)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def resolve_providers(device: str) -> list[str]:
    """Providers to request for ``device``; ``cuda`` refuses to fall back silently."""
    cuda_built = CUDA in ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if not cuda_built:
            raise StartupError("RESTORE_DEVICE=cuda but this onnxruntime build has no CUDA execution provider")
        if not gpu_visible():
            raise StartupError("RESTORE_DEVICE=cuda but no NVIDIA GPU is visible to this process")
        return [CUDA, CPU]
    return [CUDA, CPU] if cuda_built and gpu_visible() else [CPU]


class OrtEngine:
    """One ONNX Runtime session; ORT sessions are safe to call from several threads.

    ORT's messages carry the model's full path and its own source paths, so they go to the log only;
    the errors raised here, which clients read, name the model.
    """

    def __init__(
        self, path: Path, settings: Settings, providers: list[str], *, name: str | None = None,
        entries: Mapping[str, str] | None = None, default_condition: Batch | None = None,
    ) -> None:
        """``entries``: ORT session config entries (``restore.core.cpu.session_entries``)."""
        self.name = name or path.stem

        options = ort.SessionOptions()
        for key, value in (entries or {}).items():
            options.add_session_config_entry(key, value)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = settings.intra_op_threads or available_cpus()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The arena is on, and by default shrunk after every batch. Within a batch it reuses freed
        # activations; without it every large tensor is a fresh mapping whose pages fault in again (a
        # 1024 px weather tile: 2.9 s in the service against 1.5 s). Kept for good (RESTORE_CPU_MEM_ARENA),
        # each model holds its largest batch's activations for the life of the process (0.3 GB per model
        # for one 512 px tile), so a few models that each served one large request hold gigabytes.
        options.enable_cpu_mem_arena = True
        self._run_options = ort.RunOptions()
        if not settings.cpu_mem_arena:
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        provider_options: list[dict[str, str]] = []
        for provider in providers:
            if provider == CUDA:
                provider_options.append(
                    {"cudnn_conv_algo_search": settings.cudnn_conv_algo_search, "arena_extend_strategy": "kSameAsRequested"}
                )
            else:
                provider_options.append({})
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers, provider_options=provider_options)
        except Exception as exc:  # ORT raises its own untyped errors: translate at the boundary
            log.error("onnxruntime cannot load the model", extra={"model": self.name, "path": str(path), "error": str(exc)})
            raise StartupError(f"ONNX Runtime cannot load model {self.name} (the reason is in the server log)") from exc
        active = self._session.get_providers()
        if CUDA in providers and settings.device == "cuda" and CUDA not in active:
            raise StartupError(f"RESTORE_DEVICE=cuda but ONNX Runtime could not use CUDA for model {self.name}")
        self._provider = active[0]
        inputs = [i.name for i in self._session.get_inputs()]
        self._input = inputs[0]
        # a conditioned model's second input (``weather``); its row when a caller gives none
        # (warm-up, speed probe): the manifest's ``unknown``, the blind setting
        self._condition = inputs[1] if len(inputs) > 1 else None
        if self._condition is not None and default_condition is None:
            raise StartupError(f"model {self.name} takes a {self._condition!r} input but its manifest entry lists no weather_labels")
        self._default_condition = default_condition
        self._output = self._session.get_outputs()[0].name

    @property
    def provider(self) -> str:
        return self._provider

    def infer(self, batch: Batch, condition: Batch | None = None) -> Batch:
        feeds = {self._input: batch}
        if self._condition is not None:
            if condition is None:
                assert self._default_condition is not None
                condition = np.repeat(self._default_condition[None], batch.shape[0], axis=0)
            feeds[self._condition] = condition
        try:
            (result,) = self._session.run([self._output], feeds, self._run_options)
        except Exception as exc:
            log.error("onnxruntime failed on a batch", extra={"model": self.name, "shape": batch.shape, "error": str(exc)})
            raise InferenceFailed(
                f"model {self.name} failed on a batch of {batch.shape[0]} tiles of {batch.shape[-2]}x{batch.shape[-1]} "
                "(the reason is in the server log)"
            ) from exc
        return np.asarray(result, dtype=np.float32)
