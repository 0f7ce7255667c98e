"""Loads the models named by the manifest, verifies, warms and times each, and owns their schedulers.

Loading happens in the background after start-up so /healthz answers at once and /readyz reports
progress; one model failing (bad checksum, unreadable file) never stops the others from serving,
and a failed model is tried again with exponential backoff (a fixed file, a GPU that frees up),
never given up on. Readiness: every model in ``required_models`` (default: all) is ready.

Timing: after its warm-up each model runs one probe tile, twice, and keeps the faster speed; that
speed sizes its tiles (``tiling.tile_side_for``: one batch about ``batch_seconds``) and seeds the
queue's estimate of seconds of work, which every batch then refines.

The in-flight budgets every request draws on (body bytes, decoded pixels) are not the runtime's:
they are ``restore.service.limits.budget.InFlight``, beside it on the app.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from restore.core import cpu
from restore.core.hashing import sha256_file
from restore.core.manifest import ManifestError, ModelSpec, load_manifest, select_specs
from restore.core.tiling import FINE_GRANULE, TILE_GRANULE, Tiling, round_up, tile_side_for
from restore.core.types import Task
from restore.service.errors import BadRequest, ModelUnavailable, public_detail
from restore.service.inference import precision as policy
from restore.service.inference.engine import CPU, Engine, OrtEngine, resolve_providers
from restore.service.inference.scheduler import ModelScheduler
from restore.service.metrics import Metrics
from restore.service.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec], Engine]
#: Side of the tile each model is timed on at load: large enough that per-call overhead is small
#: next to the convolutions (within ~15% of a 512 px tile for DnCNN, HED and the weather model).
SPEED_PROBE_SIDE = 128


@dataclass
class ModelState:
    spec: ModelSpec
    status: Literal["loading", "ready", "failed"] = "loading"
    detail: str = "waiting to load"
    scheduler: ModelScheduler | None = None
    required: bool = True  # must be ready for /readyz to answer 200
    tile: int = 0  # tile side chosen at load (see tiling.tile_side_for)
    granule: int = TILE_GRANULE  # grid tiles are shrunk on: coarse when batches mix requests
    bucket: int = 0  # grid small images are padded up to when batches mix requests (tiling.plan_tiles)
    attempts: int = 0
    precision: policy.Precision = "float32"  # the file it runs (restore.service.inference.precision), chosen at load

    @property
    def tiling(self) -> Tiling:
        """What every plan of this model's images uses (``pipeline.plan_for``)."""
        return Tiling(self.tile, self.granule, self.bucket)

    @property
    def provider(self) -> str | None:
        return None if self.scheduler is None else self.scheduler.engine.provider


class Runtime:
    def __init__(
        self, settings: Settings, metrics: Metrics, engine_factory: EngineFactory | None = None,
        ready_message: str = "ready",
    ) -> None:
        self.settings = settings
        self._ready_message: str | None = ready_message  # logged once, when the required models first are all ready
        self.metrics = metrics
        specs = select_specs(load_manifest(settings.models_dir), settings.models)
        providers = [CPU]
        self.int8_flags = cpu.cpu_int8_flags()
        if engine_factory is None:
            providers = resolve_providers(settings.device)  # raises StartupError before we serve
            entries = cpu.session_entries(self.int8_flags)
            engine_factory = lambda spec: OrtEngine(  # noqa: E731
                spec.file, settings, providers, name=spec.name, entries=entries,
                default_condition=spec.condition("unknown") if spec.weather_labels else None,
            )
        self._engine_factory = engine_factory
        self._first_provider = providers[0]
        required = settings.required_models or tuple(spec.name for spec in specs)
        unknown = sorted(set(required) - {spec.name for spec in specs})
        if unknown:
            raise ManifestError(f"RESTORE_REQUIRED_MODELS names models that are not loaded: {unknown}")
        self.models: dict[str, ModelState] = {spec.name: ModelState(spec, required=spec.name in required) for spec in specs}
        self._loader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loader = asyncio.get_running_loop().create_task(self._load_all(), name="model-loader")

    async def stop(self) -> None:
        if self._loader is not None:
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)
        await asyncio.gather(*(s.scheduler.stop() for s in self.models.values() if s.scheduler is not None))

    @property
    def ready(self) -> bool:
        return all(state.status == "ready" for state in self.models.values() if state.required)

    def not_ready(self) -> dict[str, str]:
        return {name: f"{s.status}: {s.detail}" for name, s in self.models.items() if s.status != "ready"}

    async def _load_all(self) -> None:
        """Load every model; then retry the failed ones, waiting load_retry_s, doubling up to load_retry_max_s."""
        waiting = list(self.models.values())
        delay = self.settings.load_retry_s
        while True:
            for state in waiting:
                await self._load_one(state)
            waiting = [state for state in waiting if state.status == "failed"]
            if not waiting:
                return
            for state in waiting:
                state.detail = f"{state.detail} (attempt {state.attempts}; next in {delay:g} s)"
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.settings.load_retry_max_s)

    async def _load_one(self, state: ModelState) -> None:
        name = state.spec.name
        state.attempts += 1
        self.metrics.load_attempts.labels(name).inc()
        state.status, state.detail = "loading", "loading"
        state.precision = policy.choose(
            self.settings.precision, state.spec, provider=self._first_provider, int8_flags=self.int8_flags
        )
        s = self.settings
        try:
            engine, speed = await asyncio.to_thread(self._load, policy.at_precision(state.spec, state.precision))
            max_batch = s.batch_limit(engine.provider)
            state.tile = tile_side_for(  # a RESTORE_TILE_SIZE within the model's overlap fails here
                speed, s.batch_seconds / max_batch, overlap=state.spec.tile_overlap(s.tile_overlap),
                multiple=state.spec.multiple, largest=s.tile_size, smallest=state.spec.min_tile,
            )
        except Exception as exc:  # any failure is reported per model; the others still load
            state.status, state.detail = "failed", public_detail(exc)
            self.metrics.model_ready.labels(name).set(0)
            log.error("model failed to load", extra={"model": name, "error": str(exc), "attempt": state.attempts})
            return
        state.granule = TILE_GRANULE if max_batch > 1 else FINE_GRANULE
        state.bucket = TILE_GRANULE if max_batch > 1 and s.batch_buckets else 0
        state.scheduler = ModelScheduler(
            name, engine, self.metrics, max_batch=max_batch, max_wait_s=s.max_batch_wait_ms / 1000,
            max_queue_s=s.max_queue_seconds, pixels_per_s=speed, retry_after_s=s.retry_after_s,
        )
        state.scheduler.start()
        state.status, state.detail = "ready", "loaded, verified, warmed up"
        self.metrics.model_ready.labels(name).set(1)
        self.metrics.provider.labels(name, engine.provider).set(1)
        self.metrics.precision.labels(name, state.precision).set(1)
        log.info("model ready", extra={"model": name, "provider": engine.provider, "precision": state.precision, "tile": state.tile, "mp_per_s": round(speed / 1e6, 3)})
        if self.ready and self._ready_message is not None:
            # uvicorn's "running on" comes seconds before this: requests fail (503) until the models load
            serving = sorted(n for n, s in self.models.items() if s.status == "ready")
            log.info(self._ready_message, extra={"models": serving})
            self._ready_message = None

    def _load(self, spec: ModelSpec) -> tuple[Engine, float]:
        """The verified, warmed-up engine and its speed in pixels per second."""
        if not spec.file.is_file():
            raise FileNotFoundError(f"{spec.file.name} is missing")
        digest = sha256_file(spec.file)
        if digest != spec.sha256:
            raise ValueError(f"sha256 mismatch for {spec.file.name}: manifest {spec.sha256[:12]}..., file {digest[:12]}...")
        engine = self._engine_factory(spec)
        side = math.ceil(self.settings.warmup_size / spec.multiple) * spec.multiple
        out = engine.infer(np.zeros((1, spec.channels, side, side), dtype=np.float32))
        if out.shape[0] != 1 or out.shape[2:] != (side, side) or not np.all(np.isfinite(out)):
            raise ValueError(f"warm-up produced shape {out.shape} or non-finite values")
        probe = np.zeros((1, spec.channels, *(2 * [round_up(SPEED_PROBE_SIDE, spec.multiple)])), dtype=np.float32)
        seconds = math.inf
        for _ in range(2):  # the first run of a new shape also plans its memory
            started = time.perf_counter()
            engine.infer(probe)
            seconds = min(seconds, time.perf_counter() - started)
        return engine, probe.shape[2] * probe.shape[3] / max(seconds, 1e-9)

    def candidates(self, task: Task, *, channels: int) -> list[ModelState]:
        """The models that may serve ``task`` for an image with ``channels``: those of exactly that
        many channels, else the colour ones (a gray image goes through a colour model as RGB)."""
        fitting = [s for s in self.models.values() if s.spec.task == task and s.spec.channels in (channels, 3)]
        return [s for s in fitting if s.spec.channels == channels] or fitting

    def select(self, task: Task, *, channels: int, sigma: float | None = None, name: str | None = None) -> ModelState:
        """The model serving ``task`` for an image with ``channels``: the one ``name``d, or the one
        of that ``sigma`` (None: blind) that the manifest lists first among the default ones.
        Errors name what is available."""
        if name is not None:
            return _ready(self._named(task, name, channels))
        exact = self.candidates(task, channels=channels)
        matching = [s for s in exact if s.spec.sigma == sigma]
        if not matching:
            if not exact:
                raise ModelUnavailable(f"no {task} model is configured for {channels}-channel images")
            offered = sorted({s.spec.sigma for s in exact if s.spec.sigma is not None})
            kind = "gray" if channels == 1 else "colour"
            raise BadRequest(
                f"sigma={sigma:g} has no {kind} model; use one of {[int(v) for v in offered]} or sigma=blind for the blind model"
                if sigma is not None else f"no blind {task} model is loaded for {kind} images; pass sigma in {offered}"
            )
        return _ready(sorted(matching, key=lambda s: not s.spec.default)[0])  # stable: manifest order breaks ties

    def _named(self, task: Task, name: str, channels: int) -> ModelState:
        """``?model=``: a loaded model of ``task`` that takes ``channels`` (a colour model takes gray images as RGB)."""
        state = self.models.get(name)
        if state is None or state.spec.task != task:
            loaded = sorted(n for n, s in self.models.items() if s.spec.task == task)
            raise BadRequest(f"model {name!r} is not a loaded {task} model; loaded: {loaded}")
        if state.spec.channels not in (channels, 3):
            raise BadRequest(f"model {name!r} takes {state.spec.channels}-channel images, this one has {channels} channels")
        return state


def _ready(state: ModelState) -> ModelState:
    if state.status != "ready" or state.scheduler is None:
        raise ModelUnavailable(
            f"model {state.spec.name} is not ready ({state.status}: {state.detail})",
            headers={"Retry-After": "5"} if state.status == "loading" else None,
        )
    return state
