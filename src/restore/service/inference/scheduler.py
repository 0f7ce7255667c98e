"""Per-model tile queue and batcher: many requests' tiles in, same-shaped batches out, results scattered back.

Four parts, as in text-embeddings-inference's queue/batching/backend split:

* ``Ticket`` - a request's place in the queue, taken from the image header before any pixel is
  decoded: its estimated work (pixels the model computes, overlap included) and its deadline.
* ``TileJob`` - one request's tiles, bound to its ticket once decoded; it produces inputs on
  demand (so a 50 MP image never exists as a list of tiles) and accepts outputs.
* ``ModelScheduler._form_batch`` - takes up to ``max_batch`` same-shaped tiles in deadline order.
* ``ModelScheduler._run_batch`` - runs the engine off the event loop and hands every output to its
  job; an engine error fails every job in the batch; a cancelled job's outputs are dropped and counted.

Order. The queue keeps a clock that counts the pixels it has dispatched. A request's deadline is
the clock when it was admitted plus its own work, and batches are taken earliest deadline first:

* equal requests are served in arrival order (the clock never runs back), never newest first;
* a small request overtakes a big one that came earlier (its deadline is sooner), so it waits for
  the batch in flight, not for minutes of someone else's tiles; plain round-robin would instead
  halve its share for as long as the big one runs;
* nothing starves: once the clock passes a request's deadline, every later arrival is due after
  it, so what can still overtake it is bounded by the queue limit below.

Admission. Each ticket's work is converted to seconds with the model's measured speed (pixels
per second, measured at load and followed from every batch). A request is refused (503 with
Retry-After) when the work due before it exceeds ``max_queue_s``: the bound is the wait it would
see, in seconds, whatever the device, rather than a tile count that means minutes on a CPU and
milliseconds on a GPU. Nothing is ever queued half.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from restore.core.types import Tile
from restore.service.errors import InferenceFailed, ModelUnavailable, Overloaded, ServiceError
from restore.service.inference.engine import Engine
from restore.service.metrics import Metrics

log = logging.getLogger(__name__)

#: Weight of the newest batch in the measured speed: follows a change of load within ~10 batches.
SPEED_SMOOTHING = 0.2


@dataclass(eq=False)
class Progress:
    """How far one request's tiles are: written by the scheduler on the event loop, read by whoever
    reports it (the job API polls it). Plain numbers, so the queue and engine know nothing of HTTP."""

    total: int = 0
    done: int = 0
    started_at: float | None = None  # time.time() when its first tile went into a batch

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass(eq=False)
class TileJob:
    """One request's work for one model. Callbacks run on the model's worker thread, one at a time."""

    count: int
    tile_shape: tuple[int, int]
    make_input: Callable[[int], Tile]
    accept_output: Callable[[int, Tile], None]
    condition: Tile | None = None  # a conditioned model's one-hot row for every tile (the route's weather)
    next_index: int = 0
    delivered: int = 0
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    first_batch_at: float | None = None
    infer_seconds: float = 0.0
    done: asyncio.Future[None] | None = None
    progress: Progress | None = None

    @property
    def remaining(self) -> int:
        return self.count - self.next_index

    @property
    def tile_pixels(self) -> int:
        return self.tile_shape[0] * self.tile_shape[1]

    @property
    def queue_seconds(self) -> float:
        return (self.first_batch_at or self.submitted_at) - self.submitted_at


@dataclass(eq=False)
class Ticket:
    """A request's place in one model's queue, from admission until its waiter returns."""

    work: int  # pixels the model computes for the request (tiles x tile area)
    deadline: int  # on the queue's clock: pixels dispatched when admitted + work
    order: int  # admission order, to break ties
    job: TileJob | None = None  # bound once the image is decoded

    @property
    def pending(self) -> int:
        """Pixels not yet dispatched to a batch (the estimate until the job is bound)."""
        return self.work if self.job is None else self.job.remaining * self.job.tile_pixels


def _due(ticket: Ticket) -> tuple[int, int]:
    return ticket.deadline, ticket.order


class ModelScheduler:
    """Owns one model's queue and its single batching task."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        metrics: Metrics,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue_s: float,
        pixels_per_s: float,
        retry_after_s: int,
    ) -> None:
        self.name = name
        self.engine = engine
        self._metrics = metrics
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queue_s = max_queue_s
        self._pixels_per_s = pixels_per_s
        self._retry_after_s = retry_after_s
        self._tickets: list[Ticket] = []  # earliest deadline first
        self._clock = 0
        self._order = itertools.count()
        self._pending = 0
        self._stopped = False
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Tiles waiting (not yet in a batch)."""
        return self._pending

    @property
    def pixels_per_s(self) -> float:
        """The model's measured speed on this device, as admission uses it."""
        return self._pixels_per_s

    def queued_seconds(self, due_by: float = math.inf) -> float:
        """Estimated seconds of work not yet dispatched whose deadline is at or before ``due_by``."""
        return sum(t.pending for t in self._tickets if t.deadline <= due_by) / self._pixels_per_s

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for ticket in self._tickets:
            job = ticket.job
            if job is not None and job.done is not None and not job.done.done():
                job.done.set_exception(InferenceFailed("the service is shutting down"))
        self._executor.shutdown(wait=True)

    def admit(self, work: int) -> Ticket:
        """Take a place for ``work`` pixels, or refuse with 503 when more than the limit is due before it."""
        (ticket,) = self.admit_parts([work])
        return ticket

    def admit_parts(self, works: Sequence[int]) -> tuple[Ticket, ...]:
        """Places for one request run as several jobs (``/edges?scales=``: one per scale), priced and
        ordered as one request of their total work: one check against the limit (a request's own
        parts are never the work ahead of it), one deadline, its parts in the order given."""
        if self._stopped:
            raise ModelUnavailable(f"model {self.name} is shutting down")
        deadline = self._clock + sum(works)
        ahead = self.queued_seconds(deadline)
        if ahead > self._max_queue_s:
            self._metrics.rejections.labels(self.name).inc()
            retry = max(self._retry_after_s, math.ceil(ahead - self._max_queue_s))
            raise Overloaded(
                f"model {self.name} has about {ahead:.0f} s of work due before this request "
                f"(limit {self._max_queue_s:g} s); retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        tickets = tuple(Ticket(work, deadline, next(self._order)) for work in works)
        for ticket in tickets:
            bisect.insort(self._tickets, ticket, key=_due)
        self._publish()
        return tickets

    def release(self, ticket: Ticket) -> None:
        """Leave the queue (idempotent); an unfinished job's tiles are dropped and counted."""
        if ticket.job is not None and ticket.job.delivered < ticket.job.count:
            self._cancel(ticket.job)
        if ticket in self._tickets:
            self._tickets.remove(ticket)
            self._publish()

    @contextmanager
    def reserve(self, work: int) -> Iterator[Ticket]:
        """``admit`` for the duration of a block: decoding happens inside, holding the place."""
        with self.reserve_parts([work]) as (ticket,):
            yield ticket

    @contextmanager
    def reserve_parts(self, works: Sequence[int]) -> Iterator[tuple[Ticket, ...]]:
        """``admit_parts`` for the duration of a block."""
        tickets = self.admit_parts(works)
        try:
            yield tickets
        finally:
            for ticket in tickets:
                self.release(ticket)

    async def run(self, job: TileJob, ticket: Ticket | None = None) -> None:
        """Queue ``job`` (on ``ticket``, or admitted now) and wait until every tile is delivered.

        Cancelling the caller drops its tiles.
        """
        if ticket is None:
            ticket = self.admit(job.count * job.tile_pixels)
        if self._stopped:
            self.release(ticket)
            raise ModelUnavailable(f"model {self.name} is shutting down")
        job.done = asyncio.get_running_loop().create_future()
        ticket.job = job
        self._change_pending(job.count)
        self._wakeup.set()
        try:
            await job.done
        finally:
            self.release(ticket)

    def _cancel(self, job: TileJob) -> None:
        job.cancelled = True
        if job.remaining:
            self._metrics.dropped_tiles.labels(self.name).inc(job.remaining)
            self._change_pending(-job.remaining)
            job.next_index = job.count

    def _change_pending(self, delta: int) -> None:
        self._pending += delta
        self._metrics.queue_depth.labels(self.name).set(self._pending)

    def _publish(self) -> None:
        self._metrics.queue_seconds.labels(self.name).set(self.queued_seconds())

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            if 0 < self._pending < self._max_batch and self._max_wait_s > 0:
                await asyncio.sleep(self._max_wait_s)  # let a partial batch fill up
            batch = self._form_batch()
            if not batch:
                self._wakeup.clear()
                continue
            await self._run_batch(batch)

    def _form_batch(self) -> list[tuple[TileJob, int]]:
        """Up to ``max_batch`` tiles of the shape of the job due first, taken in deadline order."""
        picked: list[tuple[TileJob, int]] = []
        shape: tuple[int, int] | None = None
        for ticket in self._tickets:
            job = ticket.job
            if job is None or job.remaining == 0:
                continue  # still decoding, or every tile already dispatched
            if shape is None:
                shape = job.tile_shape
            elif job.tile_shape != shape:
                continue
            while job.remaining and len(picked) < self._max_batch:
                picked.append((job, job.next_index))
                job.next_index += 1
            if len(picked) == self._max_batch:
                break
        if picked:
            self._clock += sum(job.tile_pixels for job, _ in picked)
            self._change_pending(-len(picked))
            self._publish()
        return picked

    async def _run_batch(self, batch: list[tuple[TileJob, int]]) -> None:
        started = time.perf_counter()
        for job, _ in batch:
            if job.first_batch_at is None:
                job.first_batch_at = started
                if job.progress is not None:
                    job.progress.started_at = time.time()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._infer_and_scatter, batch)
        except ServiceError as exc:
            self._fail({job for job, _ in batch}, exc)
            return
        except Exception:  # a bug in blending must still answer every waiter
            log.exception("batch failed", extra={"model": self.name})
            self._fail({job for job, _ in batch}, InferenceFailed(f"model {self.name}: internal error while processing tiles (logged)"))
            return
        seconds = time.perf_counter() - started
        if seconds > 0:
            speed = sum(job.tile_pixels for job, _ in batch) / seconds
            self._pixels_per_s += SPEED_SMOOTHING * (speed - self._pixels_per_s)
        self._metrics.batch_size.labels(self.name).observe(len(batch))
        self._metrics.inference_seconds.labels(self.name).observe(seconds)
        self._metrics.tiles.labels(self.name).inc(len(batch))
        for job in {job for job, _ in batch}:
            job.infer_seconds += seconds
            delivered = sum(1 for j, _ in batch if j is job)
            job.delivered += delivered
            if job.progress is not None:  # added, not set: a multi-scale request's jobs share one Progress
                job.progress.done += delivered
            if job.delivered == job.count and job.done is not None and not job.done.done():
                job.done.set_result(None)

    def _infer_and_scatter(self, batch: list[tuple[TileJob, int]]) -> None:
        inputs = np.stack([job.make_input(index) for job, index in batch])
        if any(job.condition is not None for job, _ in batch):  # tiles of several routes share a batch
            outputs = self.engine.infer(inputs, np.stack([job.condition for job, _ in batch]))
        else:
            outputs = self.engine.infer(inputs)
        if outputs.shape[0] != len(batch):
            raise InferenceFailed(f"model {self.name} returned {outputs.shape[0]} outputs for {len(batch)} inputs")
        for (job, index), output in zip(batch, outputs):
            if job.cancelled:
                self._metrics.dropped_tiles.labels(self.name).inc()
                continue
            job.accept_output(index, output)

    def _fail(self, jobs: set[TileJob], error: ServiceError) -> None:
        for job in jobs:
            self._cancel(job)
            if job.done is not None and not job.done.done():
                job.done.set_exception(error)
