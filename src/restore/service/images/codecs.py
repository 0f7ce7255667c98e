"""Bytes to pixels and back, keeping what a photographer cares about: bit depth, alpha, ICC profile.

Pillow does most of the work. Three gaps are filled by other maintained libraries: Pillow decodes a
16-bit RGB(A) PNG to 8 bits and cannot write 16-bit colour, so 16-bit PNG goes through imagecodecs,
and 16-bit TIFF through tifffile; and Pillow's JPEG decoder ignores libjpeg's warnings, so a JPEG
whose entropy data stops early (a marker where the data should go on) decodes as grey fill: a
631-byte file declaring 10000x10000 pixels would buy 100 MP of inference. JPEG pixels therefore
come from simplejpeg (libjpeg-turbo) in strict mode, where every such warning is an error.
EXIF orientation is applied to the pixel array so every path returns the upright image, and the
EXIF block travels on with its orientation reset to 1.

Short data is never filled in: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off, tifffile's empty
or out-of-file segments (which it would fill with zeros) are refused, and a file that starts
like a format we read but that no decoder can open is corrupt (422), not foreign (415).
TIFF samples per pixel, bits per sample, sample format and planar layout are read from the
header and checked before any pixel buffer is allocated.

Every failure while decoding is the data's fault (422), whatever the decoder raised: Pillow,
imagecodecs and tifffile fail on hostile bytes with OSError, SyntaxError, RuntimeError subclasses,
OverflowError (a float EXIF tag), ValueError... and a list of those never keeps up, so ``decode``
lets only our own errors through, and a MemoryError becomes ``OutOfMemory`` (503, ``as_service_error``).
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import imagecodecs
import numpy as np
import simplejpeg
import tifffile
from PIL import Image, ImageFile, UnidentifiedImageError

from restore.core.types import ImageArray
from restore.service.errors import BadRequest, CorruptImage, PayloadTooLarge, ServiceError, UnsupportedMediaType, as_service_error
from restore.service.images import metadata
from restore.service.types import OutputFormat

log = logging.getLogger(__name__)

# We check the pixel count ourselves from the header, before any pixel is decoded, and answer 413:
# Pillow's own bomb guard would warn or raise with a message clients cannot act on.
Image.MAX_IMAGE_PIXELS = None

#: Pillow format name -> our name, for the formats we read.
READABLE = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
#: How each format we read starts: a body that starts so but that Pillow cannot open is broken (422).
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}
#: JPEG modes simplejpeg decodes to directly; others (CMYK, YCCK) are checked by it, converted by Pillow.
_JPEG_COLORSPACES = {"L": "GRAY", "RGB": "RGB"}
#: What the tifffile path decodes: 1-4 samples (gray, gray+alpha, RGB, RGBA) of 16-bit unsigned integers.
_TIFF_16_SAMPLES = range(1, 5)
#: Pillow modes ``decode`` returns as one colour channel (palette images become RGB).
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
#: JPEG keeps EXIF in one APP1 marker segment (64 KiB); a larger block is left out, not an error.
_JPEG_MAX_EXIF = 65533
#: Largest width or height each encoder writes: libwebp 16383, libjpeg 65500, and libpng's default
#: user limit for 16-bit PNG (imagecodecs); Pillow's own 8-bit PNG writer has no such limit.
_MAX_SIDE: dict[tuple[OutputFormat, int], int] = {
    ("webp", 8): 16383, ("webp", 16): 16383, ("jpeg", 8): 65500, ("jpeg", 16): 65500, ("png", 16): 1_000_000,
}
#: 8-bit TIFF is written by Pillow as classic TIFF: 32-bit offsets, so the pixel data stays under 4 GiB.
_CLASSIC_TIFF_BYTES = 2**32 - 2**20


@dataclass(frozen=True)
class DecodedImage:
    color: ImageArray  # height x width x 1 or 3, uint8 or uint16, upright
    alpha: ImageArray | None  # height x width, same dtype as color
    icc_profile: bytes | None
    source_format: str  # one of READABLE's values
    exif: bytes | None = None  # the input's EXIF block, orientation reset to 1 (the pixels are upright)

    @property
    def height(self) -> int:
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        return int(self.color.shape[1])

    @property
    def channels(self) -> int:
        return int(self.color.shape[2])

    @property
    def max_value(self) -> int:
        return 65535 if self.color.dtype == np.uint16 else 255


@dataclass(frozen=True)
class ImageHeader:
    """What the header says before any pixel is decoded: enough to pick a model and price the work."""

    width: int  # as stored (before EXIF orientation, which may swap the two)
    height: int
    channels: int  # colour channels ``decode`` returns: 1 (gray) or 3

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Size and colour channels from the header alone; refuses a bad header as ``decode`` would."""
    image = _open(data, max_pixels)
    if image is None:
        return _probe_tiff_16(data, max_pixels)
    gray = image.mode in _GRAY_MODES or image.mode.startswith("I;")
    return ImageHeader(image.size[0], image.size[1], 1 if gray else 3)


def _open(data: bytes, max_pixels: int) -> Image.Image | None:
    """Pillow's view of the header (no pixel decoded), checked; None for a TIFF only tifffile reads."""
    if not data:
        raise BadRequest("the request body is empty: send an image")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a process-wide switch another library may have turned on
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError as exc:
        if data[:4] in _TIFF_MAGIC:  # e.g. 16-bit gray+alpha, which Pillow has no mode for
            return None
        if known := _signature(data):
            raise CorruptImage(f"the body starts as a {known} file but its header is corrupt") from exc
        raise UnsupportedMediaType("the body is not an image in a format we read (PNG, JPEG, WebP, TIFF, BMP)") from exc
    except Exception as exc:
        _reraise_ours(exc)
        raise CorruptImage(f"cannot parse the image header: {exc}") from exc
    if READABLE.get(image.format or "") is None:
        raise UnsupportedMediaType(f"{image.format} images are not supported; send PNG, JPEG, WebP, TIFF or BMP")
    _check_size(*image.size, max_pixels)
    return image


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """The header's size, before any pixel is decoded: 413 over the limit, 422 with no pixels at all."""
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise CorruptImage(f"the image header claims {width}x{height} pixels")


def _probe_tiff_16(data: bytes, max_pixels: int) -> ImageHeader:
    with _blame_the_data("the TIFF data is corrupt or truncated"):
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            _check_tiff_16(page, len(data), max_pixels)
            samples = int(page.samplesperpixel)
            return ImageHeader(int(page.imagewidth), int(page.imagelength), 1 if samples <= 2 else 3)


def _check_tiff_16(page: tifffile.TiffPage, size: int, max_pixels: int) -> None:
    """What the header promises, checked before tifffile allocates width x height x samples: a
    header claiming 65535 samples per pixel would otherwise cost gigabytes before any check."""
    _check_size(int(page.imagewidth), int(page.imagelength), max_pixels)
    samples, bits = int(page.samplesperpixel), page.bitspersample
    if samples not in _TIFF_16_SAMPLES:
        raise UnsupportedMediaType(f"TIFF with {samples} samples per pixel is not supported; send 1 to 4 (gray, RGB, alpha)")
    if bits != 16 or page.sampleformat != tifffile.SAMPLEFORMAT.UINT:
        raise UnsupportedMediaType(
            f"{bits}-bit TIFF samples of format {int(page.sampleformat)} are not supported; send 8 or 16-bit integers"
        )
    if page.planarconfig not in (tifffile.PLANARCONFIG.CONTIG, tifffile.PLANARCONFIG.SEPARATE):
        raise CorruptImage(f"the TIFF's planar configuration {int(page.planarconfig)} is not 1 or 2")
    segments = list(zip(page.dataoffsets, page.databytecounts))
    if not segments or any(count <= 0 or offset + count > size for offset, count in segments):
        # tifffile fills an empty segment with zeros: a short file must not become a large image
        raise CorruptImage("the TIFF's pixel data is missing or runs past the end of the file")


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode an upload; every failure is a ServiceError the client can act on."""
    image = _open(data, max_pixels)
    if image is None:
        return _decode_tiff_16(data, max_pixels)
    fmt = READABLE[image.format or ""]
    orientation, block = metadata.read(image, fmt)
    with _blame_the_data(f"the {fmt.upper()} data is corrupt or truncated"):
        icc = image.info.get("icc_profile") or None
        color, alpha, icc = _pixels(image, data, fmt, icc)
        if fmt == "tiff" and _tiff_bits(image) != 16:
            orientation = 1  # Pillow's TIFF loader has turned these pixels upright already
    color = _orient(color, orientation)
    alpha = None if alpha is None else _orient(alpha[:, :, None], orientation)[:, :, 0]
    return DecodedImage(np.ascontiguousarray(color), alpha, icc, fmt, block)


def _reraise_ours(exc: Exception) -> None:
    """Our own errors (already a verdict) pass unchanged; MemoryError is our limit, not the data's fault."""
    if isinstance(exc, ServiceError):
        raise exc
    if isinstance(exc, MemoryError):
        raise as_service_error(exc) from exc  # type: ignore[misc]


@contextmanager
def _blame_the_data(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        _reraise_ours(exc)
        log.debug("undecodable upload", extra={"error": repr(exc)})
        raise CorruptImage(f"{what}: {exc}") from exc


def _pixels(
    image: Image.Image, data: bytes, fmt: str, icc: bytes | None
) -> tuple[ImageArray, ImageArray | None, bytes | None]:
    if fmt == "png" and data[24:25] == b"\x10":  # IHDR bit depth byte
        return (*_split(imagecodecs.png_decode(data)), icc)
    if fmt == "tiff" and _tiff_bits(image) == 16:
        return (*_split(_tiff_16(data, image.size[0] * image.size[1])), icc)
    if fmt == "jpeg":
        return _jpeg(image, data, icc)
    mode = image.mode
    if mode in ("F", "I") or mode.startswith("I;"):
        if mode.startswith("I;16"):
            return (*_split(np.asarray(image, dtype=np.uint16)), icc)
        raise UnsupportedMediaType(f"{mode!r} (32-bit) images are not supported; send 8 or 16 bits per channel")
    if mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode)
    elif mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    elif mode == "1":
        image, mode = image.convert("L"), "L"
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        # CMYK, YCbCr, LAB...: the ICC profile (if any) describes the old space, so it cannot follow.
        image, mode, icc = image.convert("RGB"), "RGB", None
    return (*_split(np.asarray(image)), icc)


def _jpeg(image: Image.Image, data: bytes, icc: bytes | None) -> tuple[ImageArray, ImageArray | None, bytes | None]:
    """Strict libjpeg-turbo: entropy data that ends early is an error, never grey fill."""
    colorspace = _JPEG_COLORSPACES.get(image.mode)
    if colorspace is not None:
        return (*_split(simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)), icc)
    simplejpeg.decode_jpeg(data, colorspace="CMYK", strict=True)  # CMYK/YCCK: checked here, converted by Pillow
    return (*_split(np.asarray(image.convert("RGB"))), None)


def _tiff_bits(image: Image.Image) -> int:
    bits = getattr(image, "tag_v2", {}).get(258, (8,))
    return int(bits[0] if isinstance(bits, tuple) else bits)


def _decode_tiff_16(data: bytes, max_pixels: int) -> DecodedImage:
    with _blame_the_data("the TIFF data is corrupt or truncated"):
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            _check_tiff_16(page, len(data), max_pixels)
            icc = page.tags.valueof(34675)
            orientation = metadata.orientation(page.tags.valueof(metadata.ORIENTATION, 1))
        color, alpha = _split(_tiff_16(data, max_pixels))
    color = _orient(color, orientation)
    alpha = None if alpha is None else _orient(alpha[:, :, None], orientation)[:, :, 0]
    return DecodedImage(np.ascontiguousarray(color), alpha, bytes(icc) if icc else None, "tiff")


def _tiff_16(data: bytes, max_pixels: int) -> np.ndarray:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        _check_tiff_16(page, len(data), max_pixels)
        array = page.asarray()
        if array.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            array = array.transpose(1, 2, 0)
    if array.dtype != np.uint16:
        raise UnsupportedMediaType(f"{array.dtype} TIFF samples are not supported; send 8 or 16 bits per channel")
    return array


def _split(array: np.ndarray) -> tuple[ImageArray, ImageArray | None]:
    """HxW[xC] -> (colour HxWx1|3, alpha HxW or None)."""
    if array.ndim == 2:
        return array[:, :, None], None
    channels = array.shape[2]
    if channels == 1:
        return array, None
    if channels == 2:
        return array[:, :, :1], array[:, :, 1]
    if channels == 3:
        return array, None
    if channels == 4:
        return array[:, :, :3], array[:, :, 3]
    raise UnsupportedMediaType(f"images with {channels} channels are not supported")


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to HxWxC pixels, as Pillow's ImageOps.exif_transpose does."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def to_8bit(array: ImageArray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def encode_limit(fmt: OutputFormat, width: int, height: int, *, channels: int = 4, bits: int = 8) -> str | None:
    """Why ``fmt`` cannot hold this image, or None; asked before inference, so no work is thrown away."""
    side = _MAX_SIDE.get((fmt, bits))
    if side is not None and max(width, height) > side:
        return f"{fmt.upper()} holds at most {side} pixels per side; the image is {width}x{height}"
    if fmt == "tiff" and bits == 8 and width * height * channels >= _CLASSIC_TIFF_BYTES:
        return f"an 8-bit TIFF holds under 4 GiB of pixels; the image is {width}x{height}x{channels}"
    return None


def encode(
    color: ImageArray,
    alpha: ImageArray | None,
    icc_profile: bytes | None,
    fmt: OutputFormat,
    *,
    exif: bytes | None = None,
    jpeg_quality: int = 95,
    webp_quality: int = 95,
    png_compress_level: int = 3,
) -> bytes:
    """Encode HxWx(1|3) pixels (+ alpha). 16 bits survive in PNG and TIFF; JPEG and WebP are 8-bit.

    ``exif`` goes whole into JPEG (unless over its 64 KiB marker limit), WebP and PNG. TIFF gets its
    main photo tags only: neither libtiff through Pillow nor tifffile writes the Exif/GPS sub-IFDs.
    """
    if fmt == "jpeg":
        alpha = None  # JPEG has no alpha channel
        if exif and len(exif) > _JPEG_MAX_EXIF:
            exif = None
    if fmt in ("jpeg", "webp"):
        color, alpha = to_8bit(color), None if alpha is None else to_8bit(alpha)
    array = color if alpha is None else np.concatenate([color, alpha[:, :, None]], axis=2)
    if array.dtype == np.uint16:
        return _encode_16(array, fmt, icc_profile, exif)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    image = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)
    options: dict[str, object] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = metadata.flat(exif).tobytes() if fmt == "tiff" else exif
    if fmt == "jpeg":
        options.update(quality=jpeg_quality, subsampling=0)
    elif fmt == "webp":
        options.update(quality=webp_quality, method=4)
        if mode in ("L", "LA"):
            image = image.convert("RGBA" if mode == "LA" else "RGB")
    elif fmt == "tiff":
        options.update(compression="tiff_adobe_deflate")
    else:
        options.update(compress_level=png_compress_level)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue()


def _encode_16(array: np.ndarray, fmt: OutputFormat, icc_profile: bytes | None, exif: bytes | None) -> bytes:
    if fmt == "png":
        png = bytes(imagecodecs.png_encode(np.ascontiguousarray(array)))
        if exif:  # the eXIf chunk holds the TIFF structure without JPEG's "Exif\0\0" prefix
            png = _after_ihdr(png, b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
        if icc_profile:
            png = _after_ihdr(png, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
        return png
    buffer = io.BytesIO()
    channels = array.shape[2]
    tifffile.imwrite(
        buffer,
        array[:, :, 0] if channels == 1 else array,
        photometric="rgb" if channels >= 3 else "minisblack",
        extrasamples=["unassalpha"] if channels in (2, 4) else None,
        compression="adobe_deflate",
        iccprofile=icc_profile,
        **metadata.tifffile_arguments(exif),
    )
    return buffer.getvalue()


def _after_ihdr(png: bytes, kind: bytes, body: bytes) -> bytes:
    """Insert a chunk right after IHDR (signature 8 bytes + IHDR chunk 25 bytes)."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]
