"""Batching across requests, fairness, bounded queue, cancellation and error fan-out."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.errors import InferenceFailed, Overloaded, PayloadTooLarge
from service.metrics import Metrics
from service.scheduler import ModelScheduler, TileJob
from tests.conftest import BoxEngine

pytestmark = pytest.mark.anyio


def job(count: int, value: float, shape: tuple[int, int] = (8, 8), sink: list | None = None) -> TileJob:  # type: ignore[type-arg]
    outputs = sink if sink is not None else []
    return TileJob(
        count, shape, lambda i: np.full((1, *shape), value, np.float32), lambda i, out: outputs.append((i, out))
    )


def scheduler(engine: BoxEngine, **overrides: float) -> tuple[ModelScheduler, Metrics]:
    metrics = Metrics()
    options = {"max_batch": 4, "max_wait_s": 0.0, "max_queue": 64, "retry_after_s": 2, **overrides}
    return ModelScheduler("m", engine, metrics, **options), metrics  # type: ignore[arg-type]


@pytest.mark.parametrize("max_batch", [1, 4])
async def test_batches_mix_requests_round_robin_so_small_ones_are_not_starved(max_batch: int) -> None:
    gate = threading.Event()
    engine = BoxEngine(radius=0, gate=gate)
    sched, _ = scheduler(engine, max_batch=max_batch)
    sched.start()
    big_done: list[float] = []
    big = asyncio.create_task(sched.run(job(40, 1.0)))
    await asyncio.sleep(0.05)  # first batch of the big job is in flight (held by the gate)
    small = asyncio.create_task(sched.run(job(1, 2.0)))
    await asyncio.sleep(0.01)
    gate.set()
    await small
    assert not big.done(), "the small request must finish long before the big one"
    await big
    big_done.append(1)
    small_batch = next(i for i, call in enumerate(engine.calls) if 2.0 in call)
    assert small_batch == 1  # the batch right after the one in flight
    assert all(len(call) <= max_batch for call in engine.calls)
    await sched.stop()


async def test_tiles_of_different_shapes_never_share_a_batch() -> None:
    engine = BoxEngine(radius=0)
    sched, _ = scheduler(engine)
    sched.start()
    await asyncio.gather(sched.run(job(3, 1.0, (8, 8))), sched.run(job(3, 1.0, (4, 6))))
    assert {shape[2:] for shape in engine.batches} == {(8, 8), (4, 6)}
    await sched.stop()


async def test_full_queue_refuses_with_retry_after_and_oversize_job_is_413() -> None:
    gate = threading.Event()
    sched, metrics = scheduler(BoxEngine(radius=0, gate=gate), max_queue=10)
    sched.start()
    first = asyncio.create_task(sched.run(job(10, 1.0)))
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as refused:
        await sched.run(job(8, 1.0))
    assert refused.value.headers["Retry-After"] == "2"
    with pytest.raises(PayloadTooLarge):
        await sched.run(job(11, 1.0))
    gate.set()
    await first
    assert metrics.rejections.labels("m")._value.get() == 1
    await sched.stop()


async def test_cancelled_request_has_its_pending_tiles_dropped() -> None:
    gate = threading.Event()
    engine = BoxEngine(radius=0, gate=gate)
    sched, metrics = scheduler(engine)
    sched.start()
    outputs: list = []  # type: ignore[type-arg]
    task = asyncio.create_task(sched.run(job(20, 1.0, sink=outputs)))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sched.depth == 0
    gate.set()
    await asyncio.sleep(0.1)
    assert len(engine.batches) == 1 and outputs == []  # the in-flight batch's outputs were discarded
    assert metrics.dropped_tiles.labels("m")._value.get() == 20
    await sched.stop()


class BrokenEngine(BoxEngine):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise InferenceFailed("device lost")


async def test_engine_error_reaches_every_request_in_the_batch() -> None:
    sched, _ = scheduler(BrokenEngine())
    sched.start()
    results = await asyncio.gather(sched.run(job(2, 1.0)), sched.run(job(2, 1.0)), return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) for r in results)
    await sched.stop()


class ShortEngine(BoxEngine):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        return super().infer(batch)[:-1]


async def test_output_count_mismatch_is_an_error_not_a_wrong_image() -> None:
    sched, _ = scheduler(ShortEngine())
    sched.start()
    with pytest.raises(InferenceFailed, match="outputs"):
        await sched.run(job(2, 1.0))
    await sched.stop()
