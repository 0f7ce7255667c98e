"""In-flight budgets: how many body bytes, or decoded pixels, all requests together may hold at once.

A ``Budget`` is a counter with a limit; each request takes a ``Hold`` on it, grows the hold as it
learns its size, and gives it back when done (idempotent, so every exit path can release). Over
the limit the request is refused with 503 and Retry-After, never queued: waiting would keep its
memory. A request alone may exceed the limit (it is then the only one in flight), so the limit
caps concurrency and never makes an image that passes the per-request limits unservable.
A hold of at least ``trim_at`` hands the freed memory back to the system when released
(``memory.trim_soon``), and so does the last hold of any size that leaves the budget empty:
measured, ten 512x512 requests (one per model; none large on its own) left the server 1.02 GiB
above idle in glibc's free lists, all of it returned by one trim once the server went idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from restore.service.errors import Overloaded
from restore.service.limits import memory
from restore.service.metrics import Metrics
from restore.service.settings import Settings


class Budget:
    def __init__(
        self, name: str, limit: int, unit: str, metrics: Metrics, *, retry_after_s: int, trim_at: int | None = None
    ) -> None:
        self.name = name
        self.limit = limit
        self.unit = unit
        self.trim_at = trim_at
        self.used = 0
        self._metrics = metrics
        self._retry_after_s = retry_after_s

    def hold(self, amount: int = 0) -> Hold:
        """A new hold of ``amount``; raises Overloaded when it does not fit."""
        hold = Hold(self)
        hold.grow(amount)
        return hold

    def _take(self, amount: int, own: int) -> None:
        if self.used > own and self.used + amount > self.limit:
            self._metrics.budget_rejections.labels(self.name).inc()
            raise Overloaded(
                f"{self.used} {self.unit} are in flight and this request needs {amount} more "
                f"(limit {self.limit}); retry shortly",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        self._change(amount)

    def _change(self, amount: int) -> None:
        self.used += amount
        self._metrics.in_flight.labels(self.name).set(self.used)


class Hold:
    """One request's share of a budget; a context manager that releases on exit."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self.amount = 0

    def grow(self, amount: int) -> None:
        """Take ``amount`` more; raises Overloaded (and keeps what it held) when it does not fit."""
        if amount > 0:
            self._budget._take(amount, self.amount)
            self.amount += amount

    def release(self) -> None:
        amount, self.amount = self.amount, 0
        self._budget._change(-amount)
        budget = self._budget
        if budget.trim_at is not None and amount > 0 and (amount >= budget.trim_at or budget.used == 0):
            memory.trim_soon()

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()


@dataclass(frozen=True)
class InFlight:
    """The budgets every request draws on while it is served, one pair per app (``app.state.in_flight``):
    body bytes (RESTORE_MAX_BODY_BYTES_IN_FLIGHT) and decoded pixels (RESTORE_MAX_PIXELS_IN_FLIGHT)."""

    bodies: Budget
    pixels: Budget

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> InFlight:
        retry = settings.retry_after_s
        return cls(
            Budget("body_bytes", settings.max_body_bytes_in_flight, "body bytes", metrics, retry_after_s=retry, trim_at=memory.TRIM_BYTES),
            Budget("pixels", settings.max_pixels_in_flight, "decoded pixels", metrics, retry_after_s=retry, trim_at=memory.TRIM_PIXELS),
        )

    @property
    def empty(self) -> bool:
        return self.bodies.used == 0 and self.pixels.used == 0
