"""In-flight budgets: how many body bytes, or decoded pixels, all requests together may hold at once.

A ``Budget`` is a counter with a limit; each request takes a ``Hold`` on it, grows the hold as it
learns its size, and gives it back when done (idempotent, so every exit path can release). Over
the limit the request is refused with 503 and Retry-After, never queued: waiting would keep its
memory. A request alone may exceed the limit (it is then the only one in flight), so the limit
caps concurrency and never makes an image that passes the per-request limits unservable.
Each hold belongs to a client (its API key, or its address without keys: ``restore.service.limits.clients``), and
one client's holds together may not pass ``client_limit`` (``RESTORE_CLIENT_BUDGET_SHARE`` of the
limit): beyond it 503, and a request that alone needs more than a client may hold is 413. So one
client, however cheap its uploads (an all-zero 100 MP PNG is 291 KB), never holds more than its
share, and the rest of the budget stays for everyone else; a job's holds stay its owner's until
it ends.
A hold of at least ``trim_at`` hands the freed memory back to the system when released
(``memory.trim_soon``), and so does the last hold of any size that leaves the budget empty:
measured, ten 512x512 requests (one per model; none large on its own) left the server 1.02 GiB
above idle in glibc's free lists, all of it returned by one trim once the server went idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from restore.service.errors import Overloaded, PayloadTooLarge
from restore.service.limits import memory
from restore.service.metrics import Metrics
from restore.service.settings import Settings


class Budget:
    def __init__(
        self, name: str, limit: int, unit: str, metrics: Metrics, *, retry_after_s: int, trim_at: int | None = None,
        client_share: float = 1.0,
    ) -> None:
        self.name = name
        self.limit = limit
        self.client_limit = max(1, int(limit * client_share))
        self.unit = unit
        self.trim_at = trim_at
        self.used = 0
        self.by_client: dict[str, int] = {}
        self._metrics = metrics
        self._retry_after_s = retry_after_s

    def hold(self, amount: int = 0, client: str | None = None) -> Hold:
        """A new hold of ``amount`` for ``client`` (None: nobody's share); raises Overloaded when it does not fit."""
        hold = Hold(self, client)
        hold.grow(amount)
        return hold

    def _take(self, amount: int, hold: Hold) -> None:
        if hold.client is not None and self.client_limit < self.limit:  # a share of 1: the global check says it all
            self._check_client(amount, hold)
        if self.used > hold.amount and self.used + amount > self.limit:
            self._refuse(f"{self.used} {self.unit} are in flight and this request needs {amount} more (limit {self.limit})")
        self._change(amount, hold.client)

    def _check_client(self, amount: int, hold: Hold) -> None:
        if hold.amount + amount > self.client_limit:
            raise PayloadTooLarge(
                f"this request needs {hold.amount + amount} {self.unit}; one client may hold at most {self.client_limit} "
                f"({self.name} limit {self.limit} x RESTORE_CLIENT_BUDGET_SHARE)"
            )
        mine = self.by_client.get(hold.client or "", 0)
        if mine + amount > self.client_limit:
            self._refuse(
                f"your requests and jobs hold {mine} {self.unit} and this one needs {amount} more; one client may hold "
                f"{self.client_limit} of the {self.limit}",
                label=f"{self.name}_per_client",
            )

    def _refuse(self, why: str, label: str | None = None) -> None:
        self._metrics.budget_rejections.labels(label or self.name).inc()
        raise Overloaded(f"{why}; retry shortly", headers={"Retry-After": str(self._retry_after_s)})

    def _change(self, amount: int, client: str | None) -> None:
        self.used += amount
        if client is not None:
            held = self.by_client.get(client, 0) + amount
            if held:
                self.by_client[client] = held
            else:
                del self.by_client[client]
        self._metrics.in_flight.labels(self.name).set(self.used)


class Hold:
    """One request's share of a budget; a context manager that releases on exit."""

    def __init__(self, budget: Budget, client: str | None = None) -> None:
        self._budget = budget
        self.client = client
        self.amount = 0

    def grow(self, amount: int) -> None:
        """Take ``amount`` more; raises Overloaded (and keeps what it held) when it does not fit."""
        if amount > 0:
            self._budget._take(amount, self)
            self.amount += amount

    def release(self) -> None:
        amount, self.amount = self.amount, 0
        if amount:
            self._budget._change(-amount, self.client)
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
            Budget(
                "body_bytes", settings.max_body_bytes_in_flight, "body bytes", metrics, retry_after_s=retry, trim_at=memory.TRIM_BYTES,
                client_share=settings.client_budget_share,
            ),
            Budget(
                "pixels", settings.max_pixels_in_flight, "decoded pixels", metrics, retry_after_s=retry, trim_at=memory.TRIM_PIXELS,
                client_share=settings.client_budget_share,
            ),
        )

    @property
    def empty(self) -> bool:
        return self.bodies.used == 0 and self.pixels.used == 0
