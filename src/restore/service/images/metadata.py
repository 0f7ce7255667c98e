"""EXIF from the input to the output: the orientation to apply, and the block to copy with it reset to 1.

Read from hostile files, so nothing here may fail a request: an orientation that is not an integer
1-8 (a float infinity, a string) counts as 1, and a block Pillow cannot parse or write is dropped.
Writers differ in what they can store: JPEG, PNG and WebP take the block whole; TIFF gets only its
main photo tags, since neither libtiff (through Pillow, when compressing) nor tifffile writes the
Exif and GPS sub-IFDs.
"""

from __future__ import annotations

from PIL import Image

ORIENTATION = 0x0112
_ORIENTATIONS = range(1, 9)
#: IFD0 tags that describe the photo (a TIFF's IFD0 also describes its own strips, which must not
#: travel): description, make, model, orientation, software, date, artist, host, copyright.
_PHOTO_TAGS = (0x010E, 0x010F, 0x0110, 0x0112, 0x0131, 0x0132, 0x013B, 0x013C, 0x8298)
_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS
_SOFTWARE = 0x0131


def orientation(value: object) -> int:
    """An EXIF orientation as the integer 1-8 to apply; anything else counts as 1 (leave as stored)."""
    return int(value) if value in _ORIENTATIONS else 1  # type: ignore[call-overload]


def read(image: Image.Image, fmt: str) -> tuple[int, bytes | None]:
    """The orientation to apply and the block for the output, orientation reset to 1 (the decoded
    pixels are upright); ``fmt`` is our name of the input format."""
    try:
        exif = image.getexif()
        turn = orientation(exif.get(ORIENTATION, 1))
    except MemoryError:
        raise
    except Exception:
        return 1, None
    try:
        if fmt == "tiff":
            exif = _photo_tags(exif)
        if not exif:
            return turn, None
        if ORIENTATION in exif:
            exif[ORIENTATION] = 1
        return turn, exif.tobytes()
    except MemoryError:
        raise
    except Exception:
        return turn, None


def _photo_tags(tiff: Image.Exif) -> Image.Exif:
    exif = Image.Exif()
    for tag in _PHOTO_TAGS:
        if tag in tiff:
            exif[tag] = tiff[tag]
    for tag in _SUB_IFDS:
        if sub := tiff.get_ifd(tag):
            exif[tag] = sub
    return exif


def flat(block: bytes) -> Image.Exif:
    """The main photo tags of a block (text, and the orientation), without its sub-IFDs: what TIFF keeps."""
    parsed = Image.Exif()
    parsed.load(block)
    kept = Image.Exif()
    for tag in _PHOTO_TAGS:
        if isinstance(parsed.get(tag), (str, int)):
            kept[tag] = parsed[tag]
    return kept


def tifffile_arguments(block: bytes | None) -> dict[str, object]:
    """tifffile.imwrite arguments that store ``flat(block)``; tifffile writes the Software tag itself."""
    if not block:
        return {}
    tags = dict(flat(block))
    software = tags.pop(_SOFTWARE, None)
    extratags = [
        (tag, "s", 0, value, True) if isinstance(value, str) else (tag, "H", 1, value, True)
        for tag, value in sorted(tags.items())
    ]
    return {"extratags": extratags, "metadata": None, "software": software}
