"""Pick the output format from ``?format=``, the ``Accept`` header and the input's own format."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from restore.service.errors import BadRequest, NotAcceptable
from restore.service.types import OutputFormat

MEDIA_TYPES: dict[OutputFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "tiff": "image/tiff",
}
_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
#: Most characters of a client's Accept header a 406 repeats back (the header itself may be 64 KiB).
ECHO_CHARS = 200


def _no_constraint(fmt: OutputFormat) -> str | None:
    return None


def parse_format(value: str) -> OutputFormat:
    name = _ALIASES.get(value.lower(), value.lower())
    if name not in MEDIA_TYPES:
        raise BadRequest(f"format={value!r} is not one of {sorted(MEDIA_TYPES)}")
    return cast(OutputFormat, name)


def _accept_ranges(header: str) -> list[tuple[str, float]]:
    ranges = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append((media.lower(), quality))
    return ranges


def _quality(media_type: str, ranges: list[tuple[str, float]]) -> float:
    """RFC 9110: the most specific matching range decides."""
    kind = media_type.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for media, quality in ranges:
        specificity = 2 if media == media_type else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]


def _echo(value: str) -> str:
    return value if len(value) <= ECHO_CHARS else f"{value[:ECHO_CHARS]}... ({len(value)} characters)"


def choose_format(
    query: str | None, accept: str | None, source_format: str, *, unfit: Callable[[OutputFormat], str | None] = _no_constraint
) -> OutputFormat:
    """?format= wins; else the best Accept match, preferring the input's format; else the input's (PNG if
    it cannot hold the result). ``unfit(fmt)`` says why a format cannot hold this output (size, depth),
    so every output constraint is settled here, before inference: 422 for ?format=, 406 for Accept.
    """
    if query:
        fmt = parse_format(query)
        if reason := unfit(fmt):
            raise BadRequest(f"format={query}: {reason}")
        return fmt
    default: OutputFormat = cast(OutputFormat, source_format) if source_format in MEDIA_TYPES else "png"
    order = [default, *(f for f in MEDIA_TYPES if f != default)]
    reasons = {f: unfit(f) for f in order}
    fitting = [f for f in order if not reasons[f]]
    if not accept or not accept.strip():
        if not fitting:
            raise BadRequest("no output format can hold this image: " + "; ".join(str(r) for r in reasons.values()))
        return fitting[0]
    ranges = _accept_ranges(accept)
    scored = [(_quality(MEDIA_TYPES[f], ranges), -i, f) for i, f in enumerate(order) if f in fitting]
    quality, _, chosen = max(scored, default=(0.0, 0, default))
    if quality <= 0:
        unfit_text = "; ".join(f"{f}: {r}" for f, r in reasons.items() if r)
        raise NotAcceptable(
            f"cannot produce any of Accept: {_echo(accept)}; we serve {', '.join(MEDIA_TYPES[f] for f in fitting)}"
            + (f" for this request ({unfit_text})" if unfit_text else "")
        )
    return chosen
