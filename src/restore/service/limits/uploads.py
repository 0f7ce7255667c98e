"""Read the image bytes of a request: multipart field ``image`` or a raw body, never past the byte limit.

Memory: one copy of the image bytes per request. A raw body is gathered as it arrives and joined
once; a multipart body is parsed as it arrives (python-multipart, in a worker thread a megabyte at
a time, so a 60 MB upload never holds the event loop) and only the ``image`` part is kept: no
second buffer, no replay, no spooling to disk and reading back. Every byte counts against the
in-flight body budget through ``hold``: a declared Content-Length is taken before a byte is read
(503 at once when it does not fit), an undeclared length as the bytes arrive.
"""

from __future__ import annotations

import asyncio

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from restore.service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from restore.service.limits.budget import Hold

#: Raw-body content types we accept besides image/*: clients that do not label their upload.
_RAW_TYPES = ("application/octet-stream", "")
#: Multipart bytes gathered on the event loop before a worker thread parses them.
_PARSE_BATCH = 1 << 20
#: Most parts a multipart body may have (the image and a few form fields).
_MAX_PARTS = 17


async def read_upload(request: Request, limit: int, hold: Hold) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if not (media_type.startswith("image/") or media_type in _RAW_TYPES or media_type == "multipart/form-data"):
        raise UnsupportedMediaType(
            f"Content-Type {media_type!r} is not an image: send multipart/form-data with field 'image' or a raw image body"
        )
    if declared and declared.isdigit():
        hold.grow(int(declared))
    form = _MultipartImage(content_type) if media_type == "multipart/form-data" else None
    chunks: list[bytes] = []
    gathered = received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        hold.grow(received - hold.amount)
        chunks.append(chunk)
        gathered += len(chunk)
        if form is not None and gathered >= _PARSE_BATCH:
            await asyncio.to_thread(form.feed, chunks)
            chunks, gathered = [], 0
    if form is None:
        return await asyncio.to_thread(b"".join, chunks)
    return await asyncio.to_thread(form.finish, chunks)


class _MultipartImage:
    """Incremental multipart/form-data parser that keeps the bytes of the part named ``image`` only."""

    def __init__(self, content_type: str) -> None:
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise BadRequest("malformed multipart body: the Content-Type has no boundary")
        self._image: list[bytes] = []
        self._images = self._parts = 0
        self._field = self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._in_image = False
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                },
            )
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from exc

    def feed(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                self._parser.write(chunk)
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from exc

    def finish(self, chunks: list[bytes]) -> bytes:
        self.feed(chunks)
        if self._parser.state != MultipartState.END:
            raise BadRequest("malformed multipart body: it ends before its closing boundary")
        if not self._images:
            raise BadRequest("the multipart body needs a file field named 'image'")
        return b"".join(self._image)

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise BadRequest(f"the multipart body has more than {_MAX_PARTS} parts")
        self._headers, self._field, self._value, self._in_image = {}, b"", b"", False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        disposition = parse_options_header(self._headers.get(b"content-disposition", b"").decode("latin-1"))[1]
        self._in_image = disposition.get(b"name") == b"image"
        if self._in_image:
            self._images += 1
            if self._images > 1:
                raise BadRequest("the multipart body has more than one field named 'image'")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_image:
            self._image.append(bytes(data[start:end]))
