from __future__ import annotations

import pytest

from restore.service.errors import BadRequest, NotAcceptable
from restore.service.images.negotiation import choose_format


@pytest.mark.parametrize(
    ("query", "accept", "source", "expected"),
    [
        (None, None, "jpeg", "jpeg"),
        (None, None, "bmp", "png"),
        (None, "*/*", "webp", "webp"),
        (None, "image/*", "tiff", "tiff"),
        (None, "image/png", "jpeg", "png"),
        (None, "image/webp;q=0.5, image/png;q=0.9", "jpeg", "png"),
        (None, "image/jpeg;q=0, image/*", "jpeg", "png"),
        (None, "text/html, image/tiff", "png", "tiff"),
        ("jpg", "image/png", "png", "jpeg"),
        ("TIFF", None, "png", "tiff"),
    ],
)
def test_choose_format(query: str | None, accept: str | None, source: str, expected: str) -> None:
    assert choose_format(query, accept, source) == expected


def test_nothing_acceptable_is_406() -> None:
    with pytest.raises(NotAcceptable):
        choose_format(None, "application/json, text/*", "png")


def test_unknown_format_parameter_is_422() -> None:
    with pytest.raises(BadRequest):
        choose_format("gif", None, "png")


def _webp_too_small(fmt: str) -> str | None:
    return "WEBP holds at most 16383 pixels per side" if fmt == "webp" else None


def test_a_format_that_cannot_hold_the_image_is_refused_or_passed_over() -> None:
    with pytest.raises(BadRequest, match="format=webp: WEBP holds"):
        choose_format("webp", None, "png", unfit=_webp_too_small)
    assert choose_format(None, None, "webp", unfit=_webp_too_small) == "png"  # the input's own format cannot: PNG
    assert choose_format(None, "image/webp, image/png;q=0.5", "png", unfit=_webp_too_small) == "png"
    with pytest.raises(NotAcceptable, match="webp: WEBP holds"):
        choose_format(None, "image/webp", "png", unfit=_webp_too_small)


def test_a_406_echoes_at_most_a_few_hundred_characters_of_accept() -> None:
    """A 64 KiB Accept header was echoed whole into the 406 body."""
    accept = "application/x-" + "a" * 60_000
    with pytest.raises(NotAcceptable) as caught:
        choose_format(None, accept, "png")
    assert len(caught.value.detail) < 500 and "60014 characters" in caught.value.detail
