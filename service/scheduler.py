"""Per-model tile queue and batcher: many requests' tiles in, same-shaped batches out, results scattered back.

Three parts, as in text-embeddings-inference's queue/batching/backend split:

* ``TileJob`` - one request's tiles; it produces inputs on demand (so a 50 MP image never exists
  as a list of tiles) and accepts outputs.
* ``ModelScheduler._form_batch`` - takes up to ``max_batch`` tiles of one shape, one tile per job
  per round, round-robin across jobs (a newly arrived job first), so a huge request cannot starve
  a small one.
* ``ModelScheduler._run_batch`` - runs the engine off the event loop and hands every output to its
  job; an engine error fails every job in the batch; a cancelled job's outputs are dropped and counted.

The queue is bounded in tiles; a request whose tiles do not fit is refused at once (503), never
queued half.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.engine import Engine
from service.errors import InferenceFailed, Overloaded, PayloadTooLarge, ServiceError
from service.metrics import Metrics
from service.types import Tile

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TileJob:
    """One request's work for one model. Callbacks run on the model's worker thread, one at a time."""

    count: int
    tile_shape: tuple[int, int]
    make_input: Callable[[int], Tile]
    accept_output: Callable[[int, Tile], None]
    next_index: int = 0
    delivered: int = 0
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    first_batch_at: float | None = None
    infer_seconds: float = 0.0
    done: asyncio.Future[None] | None = None

    @property
    def remaining(self) -> int:
        return self.count - self.next_index

    @property
    def queue_seconds(self) -> float:
        return (self.first_batch_at or self.submitted_at) - self.submitted_at


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
        max_queue: int,
        retry_after_s: int,
    ) -> None:
        self.name = name
        self.engine = engine
        self._metrics = metrics
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._jobs: deque[TileJob] = deque()
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Tiles waiting (not yet in a batch)."""
        return self._pending

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._jobs:
            if job.done is not None and not job.done.done():
                job.done.set_exception(InferenceFailed("the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def run(self, job: TileJob) -> None:
        """Queue ``job`` and wait until every tile is delivered; cancelling the caller drops its tiles."""
        if job.count > self._max_queue:
            raise PayloadTooLarge(
                f"the image needs {job.count} tiles but model {self.name} queues at most {self._max_queue}"
            )
        if self._pending + job.count > self._max_queue:
            self._metrics.rejections.labels(self.name).inc()
            raise Overloaded(
                f"model {self.name} has {self._pending} tiles queued (limit {self._max_queue}); retry shortly",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        job.done = asyncio.get_running_loop().create_future()
        # A new request takes the next turn, then joins the rotation: its first tile rides in the
        # very next batch, so a small request waits for at most the batch already running.
        self._jobs.appendleft(job)
        self._change_pending(job.count)
        self._wakeup.set()
        try:
            await job.done
        except asyncio.CancelledError:
            self._cancel(job)
            raise

    def _cancel(self, job: TileJob) -> None:
        job.cancelled = True
        if job.remaining:
            self._metrics.dropped_tiles.labels(self.name).inc(job.remaining)
            self._change_pending(-job.remaining)
            job.next_index = job.count
        if job in self._jobs:
            self._jobs.remove(job)

    def _change_pending(self, delta: int) -> None:
        self._pending += delta
        self._metrics.queue_depth.labels(self.name).set(self._pending)

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
        picked: list[tuple[TileJob, int]] = []
        shape: tuple[int, int] | None = None
        progressed = True
        while progressed and len(picked) < self._max_batch:
            progressed = False
            for job in self._jobs:
                if len(picked) == self._max_batch:
                    break
                if job.remaining == 0 or (shape is not None and job.tile_shape != shape):
                    continue
                shape = job.tile_shape
                picked.append((job, job.next_index))
                job.next_index += 1
                progressed = True
        if picked:
            self._jobs.rotate(-1)  # the next batch starts with the next request
            for job in [j for j in self._jobs if j.remaining == 0]:
                self._jobs.remove(job)
            self._change_pending(-len(picked))
        return picked

    async def _run_batch(self, batch: list[tuple[TileJob, int]]) -> None:
        started = time.perf_counter()
        for job, _ in batch:
            if job.first_batch_at is None:
                job.first_batch_at = started
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._infer_and_scatter, batch)
        except ServiceError as exc:
            self._fail({job for job, _ in batch}, exc)
            return
        except Exception as exc:  # a bug in blending must still answer every waiter
            log.exception("batch failed", extra={"model": self.name})
            self._fail({job for job, _ in batch}, InferenceFailed(f"internal error while processing tiles: {exc}"))
            return
        seconds = time.perf_counter() - started
        self._metrics.batch_size.labels(self.name).observe(len(batch))
        self._metrics.inference_seconds.labels(self.name).observe(seconds)
        self._metrics.tiles.labels(self.name).inc(len(batch))
        for job in {job for job, _ in batch}:
            job.infer_seconds += seconds
            job.delivered += sum(1 for j, _ in batch if j is job)
            if job.delivered == job.count and job.done is not None and not job.done.done():
                job.done.set_result(None)

    def _infer_and_scatter(self, batch: list[tuple[TileJob, int]]) -> None:
        inputs = np.stack([job.make_input(index) for job, index in batch])
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
