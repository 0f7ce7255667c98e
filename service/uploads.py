"""Read the image bytes of a request: multipart field ``image`` or a raw body, never past the byte limit."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

#: Raw-body content types we accept besides image/*: clients that do not label their upload.
_RAW_TYPES = ("application/octet-stream", "")


async def read_upload(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type in _RAW_TYPES or content_type == "multipart/form-data"):
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not an image: send multipart/form-data with field 'image' or a raw image body"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
    if content_type != "multipart/form-data":
        return bytes(body)
    return await _multipart_image(request, bytes(body), limit)


async def _multipart_image(request: Request, body: bytes, limit: int) -> bytes:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=1, max_fields=16, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest("the multipart body needs a file field named 'image'")
        return await upload.read()
    finally:
        await form.close()
