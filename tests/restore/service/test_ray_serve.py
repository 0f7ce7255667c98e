"""restore.service.ray_serve without a cluster: the deployment options derived from settings, the config
files, the health check and the replica header. The cluster itself: tests/e2e/test_serve_cluster.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from restore.service.settings import Settings
from tests.conftest import REPO, write_fake_suite

pytestmark = pytest.mark.ray  # make test leaves it out (a Ray import alone takes seconds); make test-all runs it

if not os.environ.get("REQUIRE_RAY"):
    pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")
yaml = pytest.importorskip("yaml")  # a dependency of ray

import ray  # noqa: E402
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary  # noqa: E402
from ray.serve._private.utils import import_attr  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from restore.service import ray_serve  # noqa: E402
from restore.service.app import create_app  # noqa: E402
from tests.conftest import fake_engine  # noqa: E402


def bound(**args: Any) -> tuple[Any, Settings]:
    """The deployment ``build(args)`` returns and the settings its replicas are given."""
    deployment = ray_serve.build(args)._bound_deployment
    return deployment, deployment.init_args[0]


def test_max_ongoing_requests_leaves_admission_to_the_app_and_the_proxy_queue_is_bounded() -> None:
    deployment, _ = bound(max_requests=5, serve_max_queued_requests=3, retry_after_s=7)
    config = deployment._deployment_config
    assert config.max_ongoing_requests == 5 + ray_serve.OPERATIONS_HEADROOM
    assert config.max_queued_requests == 3
    assert config.backpressure_config.status_code == 503 and config.backpressure_config.retry_after_s == 7


def test_equal_bounds_fix_the_replica_count_and_different_ones_autoscale() -> None:
    fixed, _ = bound(serve_min_replicas=2, serve_max_replicas=2)
    assert fixed._deployment_config.num_replicas == 2 and fixed._deployment_config.autoscaling_config is None
    scaled, _ = bound(serve_min_replicas=0, serve_max_replicas=4, serve_target_ongoing_requests=3)
    autoscaling = scaled._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.initial_replicas) == (0, 4, 1)
    assert autoscaling.target_ongoing_requests == 3


@pytest.mark.parametrize(
    ("args", "gpus"),
    [({"device": "cpu"}, 0.0), ({"device": "cuda"}, 1.0), ({"device": "cuda", "serve_num_gpus": 0.5}, 0.5), ({"device": "auto"}, 0.0)],
)
def test_gpus_per_replica(args: dict[str, Any], gpus: float) -> None:
    """auto without a connected cluster reserves none: there is no GPU count to read."""
    deployment, _ = bound(**args)
    assert deployment.ray_actor_options["num_gpus"] == gpus


def test_onnx_runtime_threads_follow_the_replicas_cpus_unless_set() -> None:
    deployment, settings = bound(serve_num_cpus=3)
    assert deployment.ray_actor_options["num_cpus"] == 3
    assert settings.intra_op_threads == 3
    assert bound(serve_num_cpus=0.5)[1].intra_op_threads == 1
    assert bound(serve_num_cpus=4, intra_op_threads=2)[1].intra_op_threads == 2


def test_args_override_the_environment_and_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORE_MAX_QUEUE_SECONDS", "9")
    monkeypatch.setenv("RESTORE_SERVE_MAX_REPLICAS", "3")
    _, settings = bound(max_queue_seconds="4", models="a, b")
    assert settings.max_queue_seconds == 4 and settings.models == ("a", "b") and settings.serve_max_replicas == 3
    with pytest.raises(ValueError, match="max_queue_secs"):
        ray_serve.build({"max_queue_secs": 4})
    with pytest.raises(ValueError, match="exceeds RESTORE_SERVE_MAX_REPLICAS"):
        ray_serve.build({"serve_min_replicas": 5, "serve_max_replicas": 2})


def test_serve_config_file_is_valid_and_builds_the_app() -> None:
    config = yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.import_path == "restore.service.ray_serve:build" and application.route_prefix == "/"
    assert not application.deployments, "deployment options come from Settings, not the config file"
    env = {k: str(v) for k, v in application.runtime_env["env_vars"].items()}
    with pytest.MonkeyPatch.context() as patch:  # what `serve run` does with the file: import, then build with args
        for key, value in env.items():
            patch.setenv(key, value)
        app = call_user_app_builder_with_args_if_necessary(import_attr(application.import_path), application.args)
    deployment = app._bound_deployment
    assert deployment.name == ray_serve.DEPLOYMENT
    assert deployment._deployment_config.autoscaling_config.max_replicas == int(env["RESTORE_SERVE_MAX_REPLICAS"])


def test_kuberay_manifest_carries_the_same_application() -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__, "the image's Ray must match the cluster's"
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    local = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text()))
    (remote_app,), (local_app,) = serve_config.applications, local.applications
    assert (remote_app.name, remote_app.import_path, remote_app.route_prefix) == (local_app.name, local_app.import_path, local_app.route_prefix)
    env = remote_app.runtime_env["env_vars"]
    gpu_group = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert gpu_group["maxReplicas"] >= int(env["RESTORE_SERVE_MAX_REPLICAS"]) * float(env["RESTORE_SERVE_NUM_GPUS"])
    assert manifest["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


class Replica(SimpleNamespace):
    """What ``Restore.check_health`` reads of its replica, without Serve (no replica context; the
    wrapper's async ``__del__`` would be left unawaited by a bare instance)."""

    async def check_health(self) -> None:
        await ray_serve.Restore.func_or_class.check_health(self)


def replica(runtime: Any, timeout_s: float = 5.0) -> Replica:
    return Replica(_settings=Settings(serve_ready_timeout_s=timeout_s), _runtime=runtime, _started=False, _replica="r1")


@pytest.mark.anyio
async def test_first_health_check_waits_for_the_models_and_later_ones_fail_at_once() -> None:
    runtime = SimpleNamespace(ready=False, not_ready=lambda: {"m": "loading: loading"})
    instance = replica(runtime)
    check = asyncio.ensure_future(instance.check_health())
    await asyncio.sleep(0.3)
    assert not check.done(), "a loading replica must not pass its start-up check"
    runtime.ready = True
    await asyncio.wait_for(check, 5)
    runtime.ready = False
    with pytest.raises(ray_serve.ReplicaNotReady, match="loading"):
        await asyncio.wait_for(instance.check_health(), 1)


@pytest.mark.anyio
async def test_a_replica_whose_models_never_load_fails_its_start() -> None:
    runtime = SimpleNamespace(ready=False, not_ready=lambda: {"m": "failed: sha256 mismatch"})
    with pytest.raises(ray_serve.ReplicaNotReady, match="sha256"):
        await replica(runtime, timeout_s=0.3).check_health()


@pytest.mark.anyio
async def test_every_answer_names_the_replica(tmp_path: Path) -> None:
    app = create_app(Settings(models_dir=write_fake_suite(tmp_path)), engine_factory=fake_engine)
    app.add_middleware(ray_serve.ReplicaHeader, replica="replica-7")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            for response in (await client.get("/healthz"), await client.get("/nowhere"), await client.post("/denoise", content=b"")):
                assert response.headers[ray_serve.REPLICA_HEADER] == "replica-7"
                assert response.headers["X-Request-ID"]


LOCAL_REPLICA = """
import sys
from ray import serve
from restore.service import ray_serve
handle = serve.run(ray_serve.build({"models": "dncnn-gray-blind", "intra_op_threads": 1, "serve_ready_timeout_s": 300}),
                   name="restore", route_prefix="/", _local_testing_mode=True)
handle.check_health.remote().result(timeout_s=330)
print("replica ready")
"""


def test_serve_runs_the_replica_lifespan_and_health_check_in_process() -> None:
    """Serve's own replica wrapper, without Ray processes (``_local_testing_mode``): the constructor,
    ``__serve_build_asgi_app__``, the app's lifespan and the health check. The check returns only
    once the model is ready, which happens only if Serve ran the lifespan that starts the runtime.
    In a child process: the replica's event loop and threads must not outlive the test."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    done = subprocess.run([sys.executable, "-c", LOCAL_REPLICA], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0 and "replica ready" in done.stdout, done.stderr[-3000:]
