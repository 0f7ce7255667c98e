"""Asynchronous jobs: records of submitted model requests and their results on disk, bounded by
count, bytes and age.

A job is a model request whose HTTP exchange ends at admission (202): ``restore.service.api.jobs``
admits it exactly as the synchronous route does, then hands the store the work (``run_model`` ->
``encode_run``, the same functions) and what the request holds (queue place, pixel budget). The
store runs the work as a task, so its tiles go through the same fair per-model queues, and keeps
the outcome:

    queued -> running -> succeeded (result file) | failed (problem+json) | cancelled

Bounds, per client (its API key; its address without keys) under a global cap, so one key
cannot evict another's results or fill the store: ``jobs_max_count_per_client`` jobs of one
client at once (a place is taken before the upload is read; its own oldest finished job is
dropped to make room, and when all of its jobs are unfinished its request gets 503), and
``jobs_max_count`` in all (the oldest finished job of the client holding the most jobs is dropped,
so a light user's results go last); likewise ``jobs_max_bytes_per_client`` and ``jobs_max_bytes``
of results; ``jobs_ttl_s`` after a job finishes it is deleted. A dropped job answers 410 saying
which bound dropped it (its id is remembered, up to ``TOMBSTONES`` ids), one deleted by its owner
or never seen 404.

Nothing survives the process: the records are in memory, and result files left by an earlier run
are deleted at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal, get_args

from restore.service.errors import Conflict, Gone, InsufficientStorage, NotFound, Overloaded, ServiceError, as_service_error, public_detail
from restore.service.inference.scheduler import Progress
from restore.service.metrics import Metrics
from restore.service.settings import Settings

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
#: A job's work: run the model and encode, following ``Progress``; returns (body, media type, headers).
Work = Callable[[Progress], Awaitable[tuple[bytes, str, dict[str, str]]]]
#: Ids of dropped jobs remembered, so that they answer 410 rather than 404.
TOMBSTONES = 10_000
#: The files this store writes; only these are deleted from a configured folder at start.
_OUR_FILE = re.compile(r"^job-[A-Za-z0-9_-]{16,64}(\.part)?$")
#: Chunk size when a result is streamed back.
CHUNK = 1 << 20
#: Why a job was dropped (the 410 says it); None: deleted by its owner (404 afterwards).
DropReason = Literal["age", "count", "client_count", "bytes", "client_bytes"]


def _iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class JobResult:
    path: Path
    size: int
    media_type: str
    headers: dict[str, str]  # X-Model, X-Model-Version, Server-Timing, X-Noise-Sigma: as the synchronous route sends


@dataclass(eq=False)
class Job:
    id: str
    operation: str
    owner: str | None  # digest of the API key that created it; None when no keys are configured
    client: str  # whom its bounds count against (restore.service.limits.clients.client_of)
    model: str
    progress: Progress
    timings: dict[str, float]  # stage -> seconds, filled in as the stages finish
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    outcome: Literal["succeeded", "failed", "cancelled"] | None = None
    error: ServiceError | None = None
    result: JobResult | None = None
    task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"/v1/jobs/{self.id}"

    @property
    def status(self) -> JobStatus:
        if self.outcome is not None:
            return self.outcome
        return "running" if self.progress.started_at is not None else "queued"

    def public(self, ttl_s: float) -> dict[str, Any]:
        """The JSON the job routes answer (documented as JOB_SCHEMA in src/restore/service/api/openapi.py)."""
        total = self.progress.total
        done = total if self.outcome == "succeeded" else self.progress.done
        result = self.result
        return {
            "id": self.id,
            "status": self.status,
            "operation": self.operation,
            "model": self.model,
            "url": self.url,
            "progress": {"done": done, "total": total, "fraction": round(done / total, 4) if total else 0.0},
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.progress.started_at),
            "finished_at": _iso(self.finished_at),
            "expires_at": _iso(None if self.finished_at is None else self.finished_at + ttl_s),
            "timings": {stage: round(seconds, 4) for stage, seconds in self.timings.items()},
            "result": None if result is None else {"url": f"{self.url}/result", "media_type": result.media_type, "bytes": result.size},
            "error": None if self.error is None else self.error.problem(),
        }


class JobStore:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._jobs: dict[str, Job] = {}  # creation order
        self._gone: OrderedDict[str, tuple[str | None, DropReason]] = OrderedDict()  # dropped id -> owner, why
        self._reserved: Counter[str] = Counter()  # places taken by requests still being admitted, per client
        self.bytes = 0  # result bytes on disk or being written
        self.folder: Path | None = None
        self._own_folder = False
        self._sweeper: asyncio.Task[None] | None = None
        for status in STATUSES:
            metrics.jobs.labels(status).set_function(partial(self.count, status))
        metrics.job_result_bytes.set_function(lambda: self.bytes)

    async def start(self) -> None:
        configured = self._settings.jobs_dir
        if configured is None:
            self.folder, self._own_folder = Path(tempfile.mkdtemp(prefix="restore-jobs-")), True
        else:
            self.folder = configured
            await asyncio.to_thread(_clear_leftovers, configured)
        ttl = self._settings.jobs_ttl_s
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(min(max(ttl / 10, 0.05), 60.0)), name="job-sweeper")

    async def stop(self) -> None:
        """Cancel what is unfinished and delete the results: jobs do not survive the process."""
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in list(self._jobs.values()):
            self._drop(job, None)
        if self._own_folder and self.folder is not None:
            await asyncio.to_thread(shutil.rmtree, self.folder, True)

    def count(self, status: JobStatus) -> int:
        return sum(1 for job in self._jobs.values() if job.status == status)

    @contextmanager
    def place(self, client: str) -> Iterator[None]:
        """A place for one more job of ``client``, taken before its upload is read and held until it
        is submitted (or refused): the count bounds hold even while several uploads are admitted at once."""
        self.sweep()
        settings = self._settings
        mine = [job for job in self._jobs.values() if job.client == client]
        room = settings.jobs_max_count_per_client - self._reserved[client]
        for job in [job for job in mine if job.outcome is not None][: max(0, len(mine) - room + 1)]:
            self._drop(job, "client_count")  # its own oldest finished first: creation order
            mine.remove(job)
        if len(mine) >= room:
            raise Overloaded(
                f"this client has {len(mine) + self._reserved[client]} jobs queued or running, the most one client "
                "may keep; retry when one finishes", headers={"Retry-After": str(settings.retry_after_s)},
            )
        while len(self._jobs) + self._reserved.total() >= settings.jobs_max_count:
            victim = self._heaviest(lambda job: job.outcome is not None, lambda job: 1)
            if victim is None:
                raise Overloaded(
                    f"{settings.jobs_max_count} jobs are queued or running, the most this server keeps; retry later",
                    headers={"Retry-After": str(settings.retry_after_s)},
                )
            self._drop(victim, "count")
        self._reserved[client] += 1
        try:
            yield
        finally:
            self._reserved[client] -= 1

    def _heaviest(self, eligible: Callable[[Job], bool], weight: Callable[[Job], int]) -> Job | None:
        """The oldest eligible job of the client whose jobs weigh most: what a global bound drops
        first, so the client using most of the store pays for the room, not the others."""
        weights: Counter[str] = Counter()
        for job in self._jobs.values():
            weights[job.client] += weight(job)
        candidates = [job for job in self._jobs.values() if eligible(job)]  # creation order
        return max(candidates, key=lambda job: weights[job.client], default=None)

    def submit(
        self, *, operation: str, owner: str | None, client: str, model: str, tiles: int, timings: dict[str, float],
        work: Work, holds: AsyncExitStack,
    ) -> Job:
        """Start ``work`` as a job; ``holds`` (queue place, budgets) are given back when it ends, however it ends."""
        job = Job(secrets.token_urlsafe(16), operation, owner, client, model, Progress(total=tiles), timings)
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, work, holds), name=f"job-{job.id}")
        job.task.add_done_callback(partial(self._settled, job, holds))
        return job

    def get(self, job_id: str, owner: str | None) -> Job:
        """The job, to its owner only: another key's job is as unknown as one that never existed."""
        self.sweep()
        job = self._jobs.get(job_id)
        if job is not None and job.owner == owner:
            return job
        gone = self._gone.get(job_id)
        if gone is not None and gone[0] == owner:
            raise Gone(f"job {job_id} {self._why_gone(gone[1])}; its result is deleted")
        raise NotFound("no such job: ids are valid until the job expires, and jobs do not survive a restart")

    def _why_gone(self, reason: DropReason) -> str:
        settings = self._settings
        return {
            "age": f"finished more than {settings.jobs_ttl_s:g} s ago (RESTORE_JOBS_TTL_S)",
            "count": f"was dropped to make room: the server keeps {settings.jobs_max_count} jobs (RESTORE_JOBS_MAX_COUNT) "
            "and this was the oldest finished job of the client holding the most",
            "client_count": f"was dropped to make room for a newer job of the same client, which may keep "
            f"{settings.jobs_max_count_per_client} (RESTORE_JOBS_MAX_COUNT_PER_CLIENT)",
            "bytes": f"was dropped to make room: results may take {settings.jobs_max_bytes} bytes (RESTORE_JOBS_MAX_BYTES) "
            "and this was the oldest result of the client holding the most",
            "client_bytes": f"was dropped to make room for a newer result of the same client, which may keep "
            f"{settings.jobs_max_bytes_per_client} bytes (RESTORE_JOBS_MAX_BYTES_PER_CLIENT)",
        }[reason]

    async def delete(self, job: Job) -> bool:
        """Cancel an unfinished job (its tiles leave the queue; it stays, cancelled, until it
        expires) and return False, or delete a finished one and its result and return True."""
        task = job.task
        if job.outcome is None and task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        self._drop(job, None)
        return True

    async def open_result(self, job: Job) -> tuple[IO[bytes], JobResult]:
        """The result file, opened (so a later eviction cannot pull it from under the response)."""
        if job.result is None:
            progress = job.progress
            why = {
                "queued": "is queued", "running": f"is running ({progress.done} of {progress.total} tiles done)",
            }.get(job.status, f"{job.status}; it has no result")
            raise Conflict(f"job {job.id} {why}: poll {job.url} until its status is succeeded")
        try:
            handle = await asyncio.to_thread(open, job.result.path, "rb")
        except FileNotFoundError as exc:
            raise Gone(f"the result of job {job.id} was deleted") from exc
        return handle, job.result

    def sweep(self) -> None:
        """Delete the jobs finished more than ``jobs_ttl_s`` ago."""
        cutoff = time.time() - self._settings.jobs_ttl_s
        for job in [j for j in self._jobs.values() if j.finished_at is not None and j.finished_at <= cutoff]:
            self._drop(job, "age")

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    async def _run(self, job: Job, work: Work, holds: AsyncExitStack) -> None:
        try:
            async with holds:
                body, media_type, headers = await work(job.progress)
            await self._keep(job, body, media_type, headers)
        except asyncio.CancelledError:
            self._finish(job, "cancelled")
        except Exception as exc:  # a bug must still end the job, visibly, and never leave it running for ever
            error = as_service_error(exc)  # ours, or a MemoryError: OutOfMemory
            if error is None:
                log.exception("job failed", extra={"job": job.id})
                error = ServiceError("an unexpected error occurred; it is logged under this job's id")
            self._finish(job, "failed", error)

    def _settled(self, job: Job, holds: AsyncExitStack, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never ran ``_run``: end the job and give back its holds here."""
        if job.outcome is None:
            self._finish(job, "cancelled")
            asyncio.get_running_loop().create_task(holds.aclose())

    def _finish(self, job: Job, outcome: Literal["succeeded", "failed", "cancelled"], error: ServiceError | None = None) -> None:
        job.outcome, job.error, job.finished_at = outcome, error, time.time()
        job.task = None  # drops the work (and the decoded image it refers to)

    async def _keep(self, job: Job, body: bytes, media_type: str, headers: dict[str, str]) -> None:
        settings, size = self._settings, len(body)
        if size > min(settings.jobs_max_bytes, settings.jobs_max_bytes_per_client):
            raise InsufficientStorage(
                f"the result is {size} bytes, more than the {min(settings.jobs_max_bytes, settings.jobs_max_bytes_per_client)} "
                "bytes one client may keep"
            )
        mine = [j for j in self._jobs.values() if j.client == job.client and j.result is not None]
        held = sum(j.result.size for j in mine if j.result is not None)
        for old in mine:  # its own oldest results first
            if held + size <= settings.jobs_max_bytes_per_client:
                break
            held -= old.result.size if old.result is not None else 0
            self._drop(old, "client_bytes")
        while self.bytes + size > settings.jobs_max_bytes:
            victim = self._heaviest(lambda j: j.result is not None, lambda j: j.result.size if j.result is not None else 0)
            if victim is None:
                raise InsufficientStorage("the result store is full of results still being written; submit again later")
            self._drop(victim, "bytes")
        assert self.folder is not None
        path = self.folder / f"job-{job.id}"
        self.bytes += size
        try:
            await _write_shielded(path, body)
        except BaseException:
            self.bytes -= size
            raise
        job.result = JobResult(path, size, media_type, headers)
        self._finish(job, "succeeded")

    def _drop(self, job: Job, reason: DropReason | None) -> None:
        """Forget ``job`` and delete its result; a job dropped by a bound (``reason``) answers 410 from now on."""
        self._jobs.pop(job.id, None)
        if job.result is not None:
            self.bytes -= job.result.size
            job.result.path.unlink(missing_ok=True)
            job.result = None
        if reason is not None:
            self._metrics.jobs_expired.labels(reason).inc()
            self._gone[job.id] = (job.owner, reason)
            while len(self._gone) > TOMBSTONES:
                self._gone.popitem(last=False)


async def _write_shielded(path: Path, body: bytes) -> None:
    """Write in a worker thread; if the job is cancelled meanwhile, the file is deleted once the thread is done."""
    future = asyncio.get_running_loop().run_in_executor(None, _write, path, body)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda _: path.unlink(missing_ok=True))
        raise
    except OSError as exc:
        raise InsufficientStorage(f"could not store the result: {public_detail(exc)}") from exc


def _write(path: Path, body: bytes) -> None:
    part = path.with_name(path.name + ".part")
    try:
        part.write_bytes(body)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _clear_leftovers(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if _OUR_FILE.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """A result file in pieces, closed at the end (or when the client leaves and the generator is closed)."""
    with handle:
        while piece := handle.read(CHUNK):
            yield piece
