"""Runs the `restore` command's files on worker threads, and stops at once when told to.

Why not ``concurrent.futures.ThreadPoolExecutor``: leaving its ``with`` block, and the interpreter's
exit, wait for every queued and running call, so Ctrl-C on a folder run used to go on through the
remaining files (47 s for 10 files) before saying "interrupted". Here the workers are daemon
threads that take the next file only while no stop was asked for, and an output is written (under
a temporary name, then renamed) only while holding ``Runner.writing``: ``stop`` takes that lock, so
once it returns no temporary file exists and none will be written, and the process can exit while
uploads are still in flight (their connections close with it; the service drops their tiles). Jobs
in flight (big files) are cancelled, best effort, within a second.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from restore.client._base import Job
from restore.client._client import Client
from restore.client._errors import ConnectionFailed, MethodNotAllowed, NotFound, RestoreError

#: The problem type of the service's own 404 (a job that does not exist); any other 404 or a 405 to
#: a POST means the URL does not lead to the service's routes.
NO_SUCH_JOB = "/problems/not-found"
#: Seconds given to cancelling the jobs in flight after Ctrl-C.
CANCEL_BUDGET_S = 1.0


@dataclass(frozen=True)
class Task:
    source: Path
    target: Path
    label: str  # the source as the user named it, for messages
    fmt: str  # the output format asked for
    refused: str = ""  # why it is not sent (not an image file): reported as failed


class Fatal(RestoreError):
    """Every file would fail the same way (the service is unreachable, the URL is wrong): stop the run."""


class Progress:
    """Files done/skipped/failed and the tiles of big files, on stderr: one updating line on a
    terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, stream: IO[str], quiet: bool) -> None:
        self.total, self.stream, self.quiet = total, stream, quiet
        self.done = self.skipped = self.failed = 0
        self.tty = stream.isatty()
        self._lock = threading.Lock()

    def _line(self, text: str, final: bool = True) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _counts(self) -> str:
        finished = self.done + self.skipped + self.failed
        return f"[{finished}/{self.total}] {self.done} done, {self.skipped} skipped, {self.failed} failed"

    def file(self, outcome: str, task: Task, message: str = "") -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            if outcome == "failed":
                self._line(f"failed: {task.label}: {message}")
            elif not self.quiet:
                self._line(f"{outcome}: {task.label} -> {task.target}" + (f" ({message})" if message else ""))
            if self.tty and not self.quiet:
                self._line(self._counts(), final=False)

    def tiles(self, task: Task, job: Job) -> None:
        if self.quiet:
            return
        with self._lock:
            text = f"{task.label}: {job.status}, tiles {job.done}/{job.total} ({job.fraction:.0%})"
            self._line(f"{self._counts()} | {text}" if self.tty else text, final=not self.tty)

    def summary(self, interrupted: bool = False) -> str:
        counts = f"{self.done} done, {self.skipped} skipped (output exists), {self.failed} failed"
        if not interrupted:
            return f"restore: {counts}"
        left = self.total - self.done - self.skipped - self.failed
        return f"restore: interrupted: {counts}, {left} not done; run the same command again to resume"


@dataclass
class Runner:
    """The files of one run, ``jobs`` at a time; ``run`` returns when they are all finished, raises
    Fatal, or is interrupted (KeyboardInterrupt in the calling thread: call ``stop`` then)."""

    client: Client
    args: argparse.Namespace
    params: dict[str, Any]
    progress: Progress
    big: int  # bytes from which a file goes through the job API
    writing: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)
    jobs: dict[str, Job] = field(default_factory=dict)  # job id -> job, of big files in flight
    fatal: list[str] = field(default_factory=list)

    def run(self, tasks: list[Task], workers: int) -> None:
        pending: queue.SimpleQueue[Task] = queue.SimpleQueue()
        for task in tasks:
            pending.put(task)
        threads = [threading.Thread(target=self._work, args=(pending,), daemon=True) for _ in range(min(workers, len(tasks)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # a timed wait: Ctrl-C reaches this thread at once
        if self.fatal:
            raise Fatal(self.fatal[0])

    def stop(self) -> None:
        """No file is started or written after this returns; jobs in flight are cancelled (best effort)."""
        with self.writing:
            self.stopped.set()
            in_flight = list(self.jobs)
        if in_flight:
            canceller = threading.Thread(target=self._cancel_jobs, args=(in_flight,), daemon=True)
            canceller.start()
            canceller.join(CANCEL_BUDGET_S)

    def _cancel_jobs(self, ids: list[str]) -> None:
        with Client(self.client.url, api_key=self.client.api_key, timeout=CANCEL_BUDGET_S, retries=0) as quick:
            for job_id in ids:
                try:
                    quick.cancel(job_id)
                except RestoreError:
                    pass  # the service drops an unfetched job when it expires anyway

    def _work(self, pending: queue.SimpleQueue[Task]) -> None:
        while not self.stopped.is_set():
            try:
                task = pending.get_nowait()
            except queue.Empty:
                return
            try:
                self._run_one(task)
            except Fatal as exc:
                with self.writing:
                    self.fatal.append(str(exc))
                    self.stopped.set()
            except Exception:
                if not self.stopped.is_set():  # a bug, not a stop: let it show
                    raise

    def _run_one(self, task: Task) -> None:
        if task.refused:
            self.progress.file("failed", task, task.refused)
            return
        if task.target.exists() and not self.args.overwrite:
            self.progress.file("skipped", task, "exists")
            return
        try:
            data = self._fetch(task)
        except OSError as exc:
            self.progress.file("failed", task, f"cannot read it: {exc.strerror or exc}")
            return
        except (ConnectionFailed, Fatal) as exc:
            raise Fatal(str(exc)) from exc
        except RestoreError as exc:
            self.progress.file("failed", task, str(exc))
            return
        with self.writing:
            if self.stopped.is_set():
                return  # interrupted while it was in flight: abandoned, nothing written
            try:
                _write(task.target, data)
            except OSError as exc:
                self.progress.file("failed", task, f"cannot write {task.target}: {exc.strerror or exc}")
                return
        self.progress.file("done", task)

    def _fetch(self, task: Task) -> bytes:
        params = {**self.params, "format": task.fmt}
        try:
            if task.source.stat().st_size < self.big:
                return self.client.run(self.args.operation, task.source, **params)
            return self.client.process(self.args.operation, task.source, progress=self._tracker(task), **params)
        except (NotFound, MethodNotAllowed) as exc:
            if exc.type == NO_SUCH_JOB:  # the job itself went missing (expired, another replica): this file only
                raise
            raise Fatal(
                f"{self.client.url}/{self.args.operation} answered {exc.status_code} {exc.title}: is --url the service "
                f"root? (the address `make run` prints, e.g. http://localhost:8000, without a path)"
            ) from exc

    def _tracker(self, task: Task) -> Callable[[Job], None]:
        def seen(job: Job) -> None:
            with self.writing:
                if job.finished:
                    self.jobs.pop(job.id, None)
                else:
                    self.jobs[job.id] = job
            self.progress.tiles(task, job)

        return seen


def _write(target: Path, data: bytes) -> None:
    """Write under a temporary name and rename: never a half-written output that a resumed run would skip."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
