"""Ray Serve: the service's FastAPI app, unchanged, as replicas that Serve places, scales and replaces.

    serve run deploy/serve.yaml                 # the config file (also what KubeRay deploys)
    serve run restore.service.ray_serve:build           # the same, settings from RESTORE_* only

Why a replica is the whole app: the in-process batcher owns its device (one replica per GPU, as one
container per GPU under Docker), so each replica builds the app exactly as ``python -m restore.service`` does
(``restore.service.app.create_app``) and Serve runs its lifespan, which starts that replica's models,
schedulers, budgets and job store. Serve's proxy routes whole HTTP requests to replicas; nothing
is shared between them.

What comes from where: the one ``Settings`` object, read where the application is built (the
``serve run``/``serve deploy`` process or KubeRay's head) from ``RESTORE_*`` plus the config's
``args``, is handed to every replica, so all replicas run one configuration. Its ``serve_*`` fields
size the deployment (``deployment_options``): CPUs and GPUs per replica, replica bounds and the
autoscaling target, the proxy's queue.

Overload: a replica takes up to ``max_requests`` model requests plus ``OPERATIONS_HEADROOM`` others
(probes, metrics, job polls), so the app's own admission (queue seconds, budgets, the request cap)
decides and answers 503 with Retry-After, as under ``make run``. Only when every replica is full does
Serve's proxy hold requests, at most ``serve_max_queued_requests``, beyond which it answers 503 with
the same Retry-After (plain text, not problem+json: Serve writes it).

Health: Serve calls ``check_health`` once when a replica starts (waiting up to
``serve_ready_timeout_s`` for the required models, so no traffic reaches a replica that is still
loading) and then every ``HEALTH_CHECK_PERIOD_S``; it fails when ``/readyz`` would answer 503, and
Serve then replaces the replica.

Every response carries ``X-Replica`` (Serve's replica id), so a client or a test can tell replicas apart.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import RayServeException
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from restore.service import logs
from restore.service.app import create_app
from restore.service.inference.runtime import Runtime
from restore.service.settings import Settings

DEPLOYMENT = "restore"
#: Requests a replica takes beyond ``max_requests`` model requests: /readyz, /metrics, job polls
#: and results, which the app never counts against its cap, must not wait in the proxy behind them.
OPERATIONS_HEADROOM = 16
HEALTH_CHECK_PERIOD_S = 10.0
HEALTH_CHECK_TIMEOUT_S = 30.0
REPLICA_HEADER = "X-Replica"


class ReplicaNotReady(RuntimeError):
    """A required model is not ready: the replica must not serve (Serve replaces it)."""


class ReplicaHeader:
    """Pure ASGI middleware (outermost): names the replica on every response, errors included."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REPLICA_HEADER] = self.replica
            await send(message)

        await self.app(scope, receive, send_named)


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()  # late-bound: each replica builds its own app in __serve_build_asgi_app__
class Restore:
    """One replica: the app of ``python -m restore.service`` built from the settings the deployment was bound with."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._replica = _replica_id()
        self._runtime: Runtime | None = None
        self._started = False
        logs.configure(settings.log_level)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Serve after the constructor, before it runs the app's lifespan (which starts the runtime)."""
        app = create_app(self._settings)
        app.add_middleware(ReplicaHeader, replica=self._replica)
        self._runtime = app.state.runtime
        return app

    async def check_health(self) -> None:
        """The predicate ``/readyz`` answers with. Serve's first call decides whether the replica
        started, so it waits for the models to load; later calls fail at once."""
        runtime = self._runtime
        assert runtime is not None, "Serve checks health only after building the app"
        if not self._started:
            deadline = asyncio.get_running_loop().time() + self._settings.serve_ready_timeout_s
            while not runtime.ready and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            self._started = True
        if not runtime.ready:
            raise ReplicaNotReady(f"replica {self._replica} is not ready: {json.dumps(runtime.not_ready())}")


def _replica_id() -> str:
    """Serve's id of this replica; in ``serve.run(..., _local_testing_mode=True)``, which runs the
    replica in the calling process without a context, the process id."""
    try:
        return str(serve.get_replica_context().replica_tag)
    except RayServeException:
        return f"local-{os.getpid()}"


def replica_gpus(settings: Settings) -> float:
    """``serve_num_gpus``, else one GPU per replica where there is a GPU to have: always with
    ``device=cuda`` (so a cluster without one fails to place the replica rather than run it on the
    CPU), never with ``cpu``, and with ``auto`` when the connected Ray cluster reports GPUs."""
    if settings.serve_num_gpus is not None:
        return settings.serve_num_gpus
    if settings.device == "cuda":
        return 1.0
    if settings.device == "cpu" or not ray.is_initialized():
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def replica_settings(settings: Settings) -> Settings:
    """What a replica runs with: ONNX Runtime threads follow the CPUs Ray reserved for it, since a
    Ray worker is not pinned to them and would otherwise start a thread per core of the node."""
    if settings.intra_op_threads:
        return settings
    return settings.model_copy(update={"intra_op_threads": max(1, math.floor(settings.serve_num_cpus))})


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Serve's deployment options, all derived from ``settings``."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.serve_num_cpus, "num_gpus": replica_gpus(settings)},
        "max_ongoing_requests": settings.max_requests + OPERATIONS_HEADROOM,
        "max_queued_requests": settings.serve_max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": settings.retry_after_s},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        # the app's own SIGTERM grace: requests in flight may finish before the replica is stopped
        "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
    }
    if settings.serve_min_replicas == settings.serve_max_replicas:
        options["num_replicas"] = settings.serve_max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": settings.serve_min_replicas,
            "max_replicas": settings.serve_max_replicas,
            "initial_replicas": max(1, settings.serve_min_replicas),
            "target_ongoing_requests": settings.serve_target_ongoing_requests,
        }
    return options


def build(args: dict[str, Any] | None = None) -> Application:
    """The application for ``serve run``/``serve deploy``: ``args`` (the config's ``args``, or
    ``key=value`` after the import path) override ``RESTORE_*`` by field name (``max_queue_seconds``,
    ``serve_max_replicas``...). An unknown name is an error, never ignored."""
    overrides = dict(args or {})
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"unknown settings in the Serve config's args: {unknown}; use Settings field names, e.g. max_queue_seconds")
    settings = Settings(**overrides)
    return Restore.options(**deployment_options(settings)).bind(replica_settings(settings))
