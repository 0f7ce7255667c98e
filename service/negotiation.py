"""Pick the output format from ``?format=``, the ``Accept`` header and the input's own format."""

from __future__ import annotations

from typing import cast

from service.errors import BadRequest, NotAcceptable
from service.types import OutputFormat

MEDIA_TYPES: dict[OutputFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "tiff": "image/tiff",
}
_ALIASES = {"jpg": "jpeg", "tif": "tiff"}


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


def choose_format(query: str | None, accept: str | None, source_format: str) -> OutputFormat:
    """?format= wins; else the best Accept match, preferring the input's format; else the input's."""
    default: OutputFormat = cast(OutputFormat, source_format) if source_format in MEDIA_TYPES else "png"
    if query:
        return parse_format(query)
    if not accept or not accept.strip():
        return default
    ranges = _accept_ranges(accept)
    order = [default, *(f for f in MEDIA_TYPES if f != default)]
    scored = [(_quality(MEDIA_TYPES[f], ranges), -i, f) for i, f in enumerate(order)]
    quality, _, chosen = max(scored)
    if quality <= 0:
        raise NotAcceptable(f"cannot produce any of Accept: {accept}; we serve {', '.join(MEDIA_TYPES.values())}")
    return chosen
