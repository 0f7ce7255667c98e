"""In-flight budgets: holds grow, refuse with 503 over the limit, and always give back what they took."""

from __future__ import annotations

import pytest

from restore.service.errors import Overloaded
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
