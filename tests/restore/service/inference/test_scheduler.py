"""Batching across requests, order (arrival, deadline, no starvation), admission by seconds, cancellation, errors."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from restore.service.errors import InferenceFailed, Overloaded
from restore.service.inference.scheduler import ModelScheduler, TileJob
from restore.service.metrics import Metrics
from restore.service.settings import Settings
from tests.conftest import BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest

pytestmark = pytest.mark.anyio
TILE = 64  # pixels of one 8 x 8 tile


def job(count: int, value: float, shape: tuple[int, int] = (8, 8), sink: list | None = None) -> TileJob:  # type: ignore[type-arg]
    outputs = sink if sink is not None else []
    return TileJob(
        count, shape, lambda i: np.full((1, *shape), value, np.float32), lambda i, out: outputs.append((i, out))
    )


def scheduler(engine: BoxEngine, **overrides: float) -> tuple[ModelScheduler, Metrics]:
    metrics = Metrics()
    options = {"max_batch": 4, "max_wait_s": 0.0, "max_queue_s": 1e9, "pixels_per_s": 1e9, "retry_after_s": 2, **overrides}
    return ModelScheduler("m", engine, metrics, **options), metrics  # type: ignore[arg-type]


def served(engine: BoxEngine) -> list[float]:
    """The value of every tile, in the order the engine saw them."""
    return [value for call in engine.calls for value in call]


async def until(condition: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


@pytest.mark.parametrize("max_batch", [1, 4])
async def test_small_request_overtakes_a_big_one_and_waits_only_for_the_batch_in_flight(max_batch: int) -> None:
    gate = threading.Event()
    engine = BoxEngine(radius=0, gate=gate)
    sched, _ = scheduler(engine, max_batch=max_batch)
    sched.start()
    big = asyncio.create_task(sched.run(job(40, 1.0)))
    await asyncio.sleep(0.05)  # first batch of the big job is in flight (held by the gate)
    small = asyncio.create_task(sched.run(job(1, 2.0)))
    await asyncio.sleep(0.01)
    gate.set()
    await small
    assert not big.done(), "the small request must finish long before the big one"
    await big
    small_batch = next(i for i, call in enumerate(engine.calls) if 2.0 in call)
    assert small_batch == 1  # the batch right after the one in flight
    assert all(len(call) <= max_batch for call in engine.calls)
    await sched.stop()


async def test_equal_requests_are_served_in_arrival_order_never_newest_first() -> None:
    """The LIFO bug of issue 13: a newly arrived one-tile request went first, so under a steady
    stream of new requests the earlier ones never came up."""
    gate = threading.Event()
    engine = BoxEngine(radius=0, gate=gate)
    sched, _ = scheduler(engine, max_batch=1)
    sched.start()
    tasks = []
    for value in range(1, 9):
        tasks.append(asyncio.create_task(sched.run(job(1, float(value)))))
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    assert served(engine) == [float(v) for v in range(1, 9)]
    await sched.stop()


async def test_closed_loop_clients_are_all_served_and_wait_only_for_those_ahead() -> None:
    """Eight clients each send one-tile requests back to back (the 32-client bench in small): every
    client is served every round, and no request waits longer than the batch in flight plus one turn
    of each client (its own included)."""
    engine = BoxEngine(radius=0)
    sched, _ = scheduler(engine, max_batch=1)
    sched.start()
    waits: dict[int, list[int]] = {client: [] for client in range(8)}

    async def client(number: int) -> None:
        for _ in range(6):
            before = len(engine.calls)
            await sched.run(job(1, float(number)))
            waits[number].append(len(engine.calls) - before)

    await asyncio.gather(*(client(n) for n in range(8)))
    assert all(len(w) == 6 for w in waits.values())
    assert max(max(w) for w in waits.values()) <= 1 + 8
    await sched.stop()


async def test_a_stream_of_small_requests_cannot_starve_a_big_one() -> None:
    """Later, smaller requests may overtake a big one only until the queue's clock reaches its
    deadline; after that it goes first, however many keep arriving."""
    engine = BoxEngine(radius=0)
    sched, _ = scheduler(engine, max_batch=1)
    sched.start()
    stop = asyncio.Event()

    async def small_client(number: int) -> None:
        while not stop.is_set():
            await sched.run(job(1, 2.0))

    smalls = [asyncio.create_task(small_client(n)) for n in range(4)]
    await until(lambda: len(engine.calls) >= 4)
    start = len(engine.calls)
    await sched.run(job(4, 1.0))  # work 4 tiles: at most 4 smaller-or-equal ones can go before it
    waited = len(engine.calls) - start
    stop.set()
    await asyncio.gather(*smalls)
    assert waited <= 4 + 4 + 4  # its own tiles, those due first on arrival, the small ones due before it
    await sched.stop()


async def test_queue_refuses_by_estimated_seconds_of_work_due_first() -> None:
    """One 8x8 tile per second: 20 tiles queued are 20 s. A second big request would wait them all
    (refused, Retry-After = the excess); a small one is due first, so it waits for nothing."""
    gate = threading.Event()
    sched, metrics = scheduler(BoxEngine(radius=0, gate=gate), max_batch=1, pixels_per_s=TILE, max_queue_s=10)
    sched.start()
    first = asyncio.create_task(sched.run(job(21, 1.0)))
    await until(lambda: sched.depth == 20)  # one tile in flight, 20 waiting
    assert sched.queued_seconds() == pytest.approx(20)
    with pytest.raises(Overloaded) as refused:
        sched.admit(20 * TILE)
    assert refused.value.headers["Retry-After"] == "10"
    assert metrics.rejections.labels("m")._value.get() == 1
    small = sched.admit(TILE)  # due before the big one: nothing ahead of it
    sched.release(small)
    gate.set()
    await first
    await sched.stop()


async def test_a_reserved_place_counts_before_its_image_is_decoded_and_is_given_back() -> None:
    sched, _ = scheduler(BoxEngine(radius=0), pixels_per_s=TILE, max_queue_s=5)
    with sched.reserve(6 * TILE):
        assert sched.queued_seconds() == pytest.approx(6)
        with pytest.raises(Overloaded):
            sched.admit(10 * TILE)
    assert sched.queued_seconds() == 0
    sched.admit(10 * TILE)  # alone in the queue: admitted, however big


async def test_a_request_in_parts_is_priced_and_ordered_as_one_request() -> None:
    """/edges?scales= runs one job per scale. Its parts are admitted as one request of their total
    work: its own earlier parts are not work ahead of its later ones (one at a time, the third
    part would see the first two, 12 s > 5 s, and be refused), they share one deadline, and they
    are served in the order given, before a request admitted after them."""
    gate = threading.Event()
    engine = BoxEngine(radius=0, gate=gate)
    sched, _ = scheduler(engine, max_batch=1, pixels_per_s=TILE, max_queue_s=5)
    with sched.reserve_parts([6 * TILE, 6 * TILE, 6 * TILE]) as parts:
        assert len({t.deadline for t in parts}) == 1 and sched.queued_seconds() == pytest.approx(18)
        with pytest.raises(Overloaded):
            sched.admit(TILE * 20)  # someone else's request due after all 18 s of them
        sched.start()
        runs = [asyncio.create_task(sched.run(job(6, float(k)), ticket)) for k, ticket in enumerate(parts)]
        gate.set()
        await asyncio.gather(*runs)
    assert served(engine) == [float(k) for k in range(3) for _ in range(6)]
    assert sched.queued_seconds() == 0
    await sched.stop()


async def test_speed_estimate_follows_the_batches() -> None:
    sched, _ = scheduler(BoxEngine(radius=0, delay=0.01), pixels_per_s=1e12)
    sched.start()
    await sched.run(job(3, 1.0))
    assert sched.pixels_per_s < 1e12  # measured batches pull the seed down
    await sched.stop()


async def test_tiles_of_different_shapes_never_share_a_batch() -> None:
    engine = BoxEngine(radius=0)
    sched, _ = scheduler(engine)
    sched.start()
    await asyncio.gather(sched.run(job(3, 1.0, (8, 8))), sched.run(job(3, 1.0, (4, 6))))
    assert {shape[2:] for shape in engine.batches} == {(8, 8), (4, 6)}
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
    assert sched.depth == 0 and sched.queued_seconds() == 0
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
    assert sched.queued_seconds() == 0
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



@pytest.mark.parametrize("buckets", [True, False])
async def test_requests_of_different_small_sizes_share_a_batch_when_padded_to_buckets(tmp_path: Path, buckets: bool) -> None:
    """Three images of three sizes below the tile wait behind a batch in flight: padded to the 64 px
    grid they form one batch of three; at their own sizes, three batches of one. Each answer has
    its own size."""
    gate = threading.Event()
    engine = BoxEngine(radius=1, gate=gate)
    root = write_fake_manifest(tmp_path, [{"name": "gray", "overlap": 1}])
    settings = Settings(models_dir=root, max_batch=4, max_batch_wait_ms=0, batch_seconds=0, tile_size=256, batch_buckets=buckets)
    gate.set()  # warm-up and speed probe go through
    async with serve(settings, lambda spec: engine) as client:
        gate.clear()
        engine.batches.clear()

        async def post(height: int, width: int) -> httpx.Response:
            return await client.post("/denoise", content=encode_pil(noisy_image(height, width, 1), "PNG"))

        scheduler = client._transport.app.state.runtime.models["gray"].scheduler  # type: ignore[attr-defined]
        first = asyncio.create_task(post(30, 30))
        await until(lambda: scheduler.queued_seconds() == 0 and scheduler._tickets)  # in the engine, held by the gate
        rest = [asyncio.create_task(post(h, w)) for h, w in ((40, 70), (50, 100), (63, 127))]
        await until(lambda: scheduler.depth == 3)  # all three decoded and queued
        gate.set()
        answers = [await task for task in (first, *rest)]
    assert [a.status_code for a in answers] == [200] * 4
    assert [Image.open(io.BytesIO(a.content)).size for a in answers] == [(30, 30), (70, 40), (100, 50), (127, 63)]
    assert sorted(shape[0] for shape in engine.batches) == ([1, 3] if buckets else [1, 1, 1, 1]), engine.batches
    assert ((3, 1, 64, 128) in engine.batches) is buckets
