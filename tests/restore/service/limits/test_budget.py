"""In-flight budgets: holds grow, refuse with 503 over the limit, and always give back what they took."""

from __future__ import annotations

import pytest

from restore.service.errors import Overloaded, PayloadTooLarge
from restore.service.limits.budget import Budget
from restore.service.metrics import Metrics


def budget(limit: int = 100) -> Budget:
    return Budget("pixels", limit, "decoded pixels", Metrics(), retry_after_s=3)


def test_holds_add_up_to_the_limit_and_one_more_is_refused_with_retry_after() -> None:
    pixels = budget()
    first, second = pixels.hold(60), pixels.hold(40)
    assert pixels.used == 100
    with pytest.raises(Overloaded) as refused:
        pixels.hold(1)
    assert refused.value.headers["Retry-After"] == "3"
    assert pixels._metrics.budget_rejections.labels("pixels")._value.get() == 1
    first.release()
    second.release()
    assert pixels.used == 0


def test_a_request_alone_may_exceed_the_limit_so_no_valid_image_is_unservable() -> None:
    pixels = budget()
    with pixels.hold(500) as alone:
        alone.grow(100)  # still alone: growing is allowed
        with pytest.raises(Overloaded):
            pixels.hold(1)
    assert pixels.used == 0


def test_a_growing_hold_is_refused_once_others_leave_no_room_and_keeps_what_it_had() -> None:
    bodies = budget()
    other = bodies.hold(50)
    growing = bodies.hold(30)
    with pytest.raises(Overloaded):
        growing.grow(30)
    assert growing.amount == 30 and bodies.used == 80
    growing.release()
    growing.release()  # idempotent: every exit path may release
    other.release()
    assert bodies.used == 0
    assert bodies._metrics.in_flight.labels("pixels")._value.get() == 0


def test_one_client_holds_at_most_its_share_and_a_request_over_it_alone_is_413() -> None:
    """Issue 31: a 291 KB all-zero PNG declaring 100 MP is legal; its client must still leave the
    rest of the budget to everyone else."""
    budget = Budget("pixels", 100, "pixels", Metrics(), retry_after_s=2, client_share=0.5)
    first = budget.hold(30, "a")
    budget.hold(20, "a")
    with pytest.raises(Overloaded, match="one client may hold 50"):
        budget.hold(1, "a")
    other = budget.hold(50, "b")  # the other half is still there
    with pytest.raises(PayloadTooLarge, match="at most 50"):
        budget.hold(51, "c")
    first.release()
    assert budget.by_client == {"a": 20, "b": 50}
    budget.hold(30, "a")
    other.release()
    assert budget.by_client == {"a": 50} and budget.used == 50
