"""Decoding and encoding keep bit depth, alpha, ICC and orientation; bad input maps to clear errors."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageFile, ImageOps

from restore.service.errors import BadRequest, CorruptImage, OutOfMemory, PayloadTooLarge, UnsupportedMediaType
from restore.service.images import codecs
from tests.conftest import encode_pil, noisy_image

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP"])
def test_lossless_8bit_roundtrip(fmt: str) -> None:
    image = noisy_image(9, 14, 3)
    options = {"lossless": True} if fmt == "WEBP" else {}
    decoded = codecs.decode(encode_pil(image, fmt, **options), 10**6)
    assert decoded.color.dtype == np.uint8 and decoded.alpha is None
    np.testing.assert_array_equal(decoded.color, image)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_16bit_survives_decode_and_encode(fmt: str, channels: int, with_alpha: bool) -> None:
    color = noisy_image(7, 11, channels, dtype=np.uint16)
    alpha = noisy_image(7, 11, 1, seed=9, dtype=np.uint16)[:, :, 0] if with_alpha else None
    data = codecs.encode(color, alpha, SRGB_ICC if channels == 3 else None, fmt)  # type: ignore[arg-type]
    decoded = codecs.decode(data, 10**6)
    assert decoded.color.dtype == np.uint16
    np.testing.assert_array_equal(decoded.color, color)
    if with_alpha:
        np.testing.assert_array_equal(decoded.alpha, alpha)
    if channels == 3:
        assert decoded.icc_profile == SRGB_ICC


def test_16bit_rgb_png_written_by_another_encoder_is_read_at_16_bits() -> None:
    color = noisy_image(5, 6, 3, dtype=np.uint16)
    decoded = codecs.decode(bytes(imagecodecs.png_encode(color)), 10**6)
    np.testing.assert_array_equal(decoded.color, color)


def test_gray_alpha_and_palette_with_transparency() -> None:
    la = np.dstack([noisy_image(6, 5, 1), noisy_image(6, 5, 1, seed=2)])
    decoded = codecs.decode(encode_pil(la, "PNG"), 10**6)
    assert decoded.channels == 1
    np.testing.assert_array_equal(decoded.alpha, la[:, :, 1])
    palette = Image.fromarray(noisy_image(6, 5, 3)).quantize(8)
    palette.info["transparency"] = 0
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    decoded = codecs.decode(buffer.getvalue(), 10**6)
    assert decoded.channels == 3 and decoded.alpha is not None and (decoded.alpha == 0).any()


def test_cmyk_jpeg_becomes_rgb() -> None:
    rgb = Image.fromarray(noisy_image(8, 8, 3))
    buffer = io.BytesIO()
    rgb.convert("CMYK").save(buffer, "JPEG", quality=95)
    decoded = codecs.decode(buffer.getvalue(), 10**6)
    assert decoded.channels == 3
    assert np.abs(decoded.color.astype(int) - np.asarray(rgb.convert("CMYK").convert("RGB")).astype(int)).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation: int) -> None:
    image = Image.fromarray(noisy_image(6, 10, 3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif.tobytes())
    decoded = codecs.decode(buffer.getvalue(), 10**6)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    np.testing.assert_array_equal(decoded.color, expected)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
def test_icc_profile_is_kept_in_every_output_format(fmt: str) -> None:
    data = codecs.encode(noisy_image(8, 8, 3), None, SRGB_ICC, fmt)  # type: ignore[arg-type]
    assert Image.open(io.BytesIO(data)).info.get("icc_profile") == SRGB_ICC


def test_jpeg_output_is_quality_95_444() -> None:
    data = codecs.encode(noisy_image(16, 16, 3), None, None, "jpeg", jpeg_quality=95)
    image = Image.open(io.BytesIO(data))
    assert image.layer[0][1:3] == image.layer[1][1:3] == (1, 1)  # no chroma subsampling


def test_errors() -> None:
    png = encode_pil(noisy_image(32, 32, 3), "PNG")
    with pytest.raises(BadRequest):
        codecs.decode(b"", 10**6)
    with pytest.raises(UnsupportedMediaType):
        codecs.decode(b"just some text, not an image", 10**6)
    with pytest.raises(UnsupportedMediaType):
        codecs.decode(encode_pil(noisy_image(4, 4, 3), "GIF"), 10**6)
    with pytest.raises(CorruptImage):
        codecs.decode(png[: len(png) // 2], 10**6)
    jpeg = encode_pil(noisy_image(64, 64, 3), "JPEG")
    with pytest.raises(CorruptImage):
        codecs.decode(jpeg[: len(jpeg) // 2], 10**6)
    with pytest.raises(PayloadTooLarge):
        codecs.decode(png, 32 * 32 - 1)


def decompression_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (the IDAT is a short zlib stream)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(PayloadTooLarge, match="100000x100000"):
        codecs.decode(decompression_bomb(100_000, 100_000), 100_000_000)


def exif_with_double_orientation(value: float) -> bytes:
    """An EXIF block whose Orientation is stored as a DOUBLE (type 12), as a hostile file may do."""
    entry = struct.pack("<HHII", 0x0112, 12, 1, 26)  # tag, type DOUBLE, count 1, value at offset 26
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0) + struct.pack("<d", value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e300, 9.0])
def test_an_orientation_that_is_not_1_to_8_counts_as_1(value: float) -> None:
    pixels = noisy_image(6, 10, 3)
    decoded = codecs.decode(encode_pil(pixels, "PNG", exif=exif_with_double_orientation(value)), 10**6)
    np.testing.assert_array_equal(decoded.color, pixels)


def _tiff(array: np.ndarray, compression: str | None, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression=compression, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


TIFF_COMPRESSIONS = ["packbits", "lzw", "zstd", "lzma", "jpeg2000", "jpegxl", "adobe_deflate"]


@pytest.mark.parametrize("compression", TIFF_COMPRESSIONS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_corrupt_compressed_tiff_is_a_corrupt_image(compression: str, dtype: type) -> None:
    """Every decoder's own error (imagecodecs' RuntimeErrors, tifffile's ValueErrors...) becomes 422."""
    data = _tiff(noisy_image(24, 20, 3, dtype=dtype), compression, photometric="rgb")
    rng = np.random.default_rng(3)
    for case in range(24):
        broken = bytearray(data[: int(rng.integers(8, len(data)))] if case % 2 else data)
        for _ in range(0 if case % 2 else 8):
            broken[int(rng.integers(8, len(broken)))] = int(rng.integers(256))
        try:
            codecs.decode(bytes(broken), 10**6)
        except (CorruptImage, UnsupportedMediaType, PayloadTooLarge, BadRequest):
            pass


@pytest.mark.parametrize("orientation", [3, 6])
@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_orientation_is_applied_once(orientation: int, bits: int) -> None:
    """Pillow turns 8-bit TIFF pixels upright itself; tifffile (16-bit) leaves it to us."""
    pixels = noisy_image(6, 10, 3, dtype=np.uint16 if bits == 16 else np.uint8)
    data = _tiff(pixels, "adobe_deflate", photometric="rgb", extratags=[(0x0112, "H", 1, orientation, True)])
    expected = np.rot90(pixels, 2) if orientation == 3 else np.rot90(pixels, -1)
    np.testing.assert_array_equal(codecs.decode(data, 10**6).color, expected)


def _camera_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal, in the Exif sub-IFD
    return exif


@pytest.mark.parametrize("source", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_exif_travels_with_orientation_reset_to_1(source: str, fmt: str, dtype: type) -> None:
    data = encode_pil(noisy_image(6, 10, 3), source, exif=_camera_exif(6).tobytes())
    decoded = codecs.decode(data, 10**6)
    assert decoded.color.shape == (10, 6, 3)  # turned upright...
    color = decoded.color.astype(dtype) * (257 if dtype == np.uint16 else 1)
    out = Image.open(io.BytesIO(codecs.encode(color, None, None, fmt, exif=decoded.exif))).getexif()  # type: ignore[arg-type]
    assert out[0x0112] == 1 and out[0x010F] == "Canon"  # ...so the output says it is upright
    if fmt != "tiff":  # TIFF keeps the main tags only: our writers cannot write the Exif sub-IFD
        assert out.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"


def test_no_exif_in_no_exif_out() -> None:
    decoded = codecs.decode(encode_pil(noisy_image(6, 10, 3), "PNG"), 10**6)
    assert decoded.exif is None
    assert not Image.open(io.BytesIO(codecs.encode(decoded.color, None, None, "jpeg", exif=None))).getexif()


def test_exif_too_large_for_jpeg_is_left_out() -> None:
    exif = _camera_exif(1)
    exif[0x010E] = "x" * 70_000  # ImageDescription: the block no longer fits one JPEG marker
    data = codecs.encode(noisy_image(6, 10, 3), None, None, "jpeg", exif=exif.tobytes())
    assert not Image.open(io.BytesIO(data)).getexif()


@pytest.mark.parametrize(
    ("fmt", "width", "height", "bits", "fits"),
    [
        ("webp", 16383, 1, 8, True), ("webp", 16384, 1, 8, False), ("webp", 1, 20000, 16, False),
        ("jpeg", 65500, 1, 8, True), ("jpeg", 65501, 1, 8, False), ("jpeg", 2, 70000, 16, False),
        ("png", 2_000_000, 1, 8, True), ("png", 1_000_000, 1, 16, True), ("png", 1_000_001, 1, 16, False),
        ("tiff", 2_000_000, 1, 16, True), ("tiff", 40_000, 30_000, 8, False),
    ],
)
def test_encode_limit_matches_the_encoders(fmt: str, width: int, height: int, bits: int, fits: bool) -> None:
    reason = codecs.encode_limit(fmt, width, height, channels=4, bits=bits)  # type: ignore[arg-type]
    assert (reason is None) == fits
    if width * height <= 2_000_000:  # cheap enough to check against the encoder itself
        pixels = np.zeros((height, width, 1), np.uint16 if bits == 16 else np.uint8)
        if fits:
            codecs.encode(pixels, None, None, fmt)  # type: ignore[arg-type]
        else:
            with pytest.raises(Exception):  # noqa: B017 - each encoder fails in its own way
                codecs.encode(pixels, None, None, fmt)  # type: ignore[arg-type]


# --- Short data is refused, never filled in (issue 31) -------------------------------------------------------------

def short_jpeg(width: int, height: int, *, progressive: bool = False, channels: int = 3) -> bytes:
    """A 16x16 JPEG whose frame header claims ``width`` x ``height``: its entropy data ends (at EOI)
    after the first blocks, which Pillow alone decodes as grey fill."""
    data = bytearray(encode_pil(noisy_image(16, 16, channels), "JPEG", quality=50, progressive=progressive))
    frame = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, height, width)
    return bytes(data)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, position = [], 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position:position + 4])
        chunks.append((png[position + 4:position + 8], png[position + 8:position + 8 + length]))
        position += 12 + length
    return chunks


def png_with_short_idat(png: bytes, keep: float) -> bytes:
    """The same PNG with its zlib stream ending (cleanly) after ``keep`` of the rows: a well-formed file, short data."""
    chunks = _chunks(png)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    short = zlib.compress(raw[: int(len(raw) * keep)])
    kept = [c for c in chunks if c[0] not in (b"IDAT", b"IEND")] + [(b"IDAT", short), (b"IEND", b"")]
    return png[:8] + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in kept
    )


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noisy_image(64, 64, 3)).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def cut_with_eoi(jpeg: bytes) -> bytes:
    return jpeg[: len(jpeg) // 2] + b"\xff\xd9"


SHORT_IMAGES = {
    "jpeg 10000x10000 declared, 16x16 sent": lambda: short_jpeg(10000, 10000),
    "progressive jpeg, 16x16 sent": lambda: short_jpeg(4000, 4000, progressive=True),
    "gray jpeg, 16x16 sent": lambda: short_jpeg(4000, 4000, channels=1),
    "jpeg cut, EOI appended": lambda: cut_with_eoi(encode_pil(noisy_image(64, 64, 3), "JPEG")),
    "cmyk jpeg cut, EOI appended": lambda: cut_with_eoi(cmyk_jpeg()),
    "png short zlib stream": lambda: png_with_short_idat(encode_pil(noisy_image(64, 64, 3), "PNG"), 0.3),
    "16-bit png short zlib stream": lambda: png_with_short_idat(
        bytes(imagecodecs.png_encode(noisy_image(64, 64, 3, dtype=np.uint16))), 0.3
    ),
    "bmp cut": lambda: encode_pil(noisy_image(64, 64, 3), "BMP")[:6000],
    "webp cut": lambda: (lambda d: d[: len(d) // 2])(encode_pil(noisy_image(64, 64, 3), "WEBP")),
    "tiff cut": lambda: encode_pil(noisy_image(64, 64, 3), "TIFF")[:6000],
    "deflate tiff cut": lambda: (lambda d: d[: len(d) // 2])(
        encode_pil(noisy_image(64, 64, 3), "TIFF", compression="tiff_adobe_deflate")
    ),
    "16-bit gray+alpha tiff cut": lambda: (lambda d: d[: len(d) // 2])(
        _tiff(noisy_image(64, 64, 2, dtype=np.uint16), None, photometric="minisblack", extrasamples=["unassalpha"])
    ),
}


@pytest.mark.parametrize("name", list(SHORT_IMAGES))
def test_short_or_truncated_image_data_is_a_corrupt_image_in_every_format(name: str) -> None:
    """Pillow, libjpeg and tifffile each have a lenient path that fills missing pixels (grey, zeros):
    a 631-byte JPEG would otherwise decode to 100 MP. Every one is a 422, never pixels."""
    with pytest.raises(CorruptImage):
        codecs.decode(SHORT_IMAGES[name](), 100_000_000)


def test_load_truncated_images_set_by_another_library_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    png = encode_pil(noisy_image(64, 64, 3), "PNG")
    with pytest.raises(CorruptImage):
        codecs.decode(png[: len(png) // 2], 10**6)


def test_strict_jpeg_decoding_gives_pillows_pixels() -> None:
    for channels, subsampling in ((3, 0), (3, 2), (1, 0)):
        data = encode_pil(noisy_image(40, 56, channels), "JPEG", quality=90, subsampling=subsampling)
        expected = np.asarray(Image.open(io.BytesIO(data)))
        decoded = codecs.decode(data, 10**6)
        np.testing.assert_array_equal(decoded.color[..., 0] if channels == 1 else decoded.color, expected)


def tiff_16_with_empty_strips(width: int, height: int) -> bytes:
    """A 16-bit gray+alpha TIFF whose strip byte counts are zero: tifffile would fill the image with zeros."""
    data = bytearray(_tiff(noisy_image(height, width, 2, dtype=np.uint16), None, photometric="minisblack",
                           extrasamples=["unassalpha"], rowsperstrip=1))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tag = tif.pages.first.tags["StripByteCounts"]
        offset, count, size = tag.valueoffset, tag.count, {3: 2, 4: 4}[tag.dtype]
    data[offset:offset + count * size] = b"\0" * (count * size)
    return bytes(data)


def test_a_tiff_whose_strips_are_empty_is_not_filled_with_zeros() -> None:
    with pytest.raises(CorruptImage, match="missing"):
        codecs.decode(tiff_16_with_empty_strips(16, 16), 10**6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_a_known_format_with_a_broken_header_is_422_not_415(fmt: str) -> None:
    data = bytearray(encode_pil(noisy_image(32, 32, 3), fmt))
    data[12:40] = bytes(range(28))  # the header (PNG: IHDR and its CRC) is garbage, the signature intact
    with pytest.raises(CorruptImage):
        codecs.decode(bytes(data), 10**6)


def tiff_with_samples(samples: int, dtype: type = np.uint16, side: int = 32) -> bytes:
    return _tiff(np.zeros((side, side, samples), dtype), "zlib", photometric="minisblack", planarconfig="contig")


@pytest.mark.parametrize("samples,dtype", [(1000, np.uint16), (5, np.uint16), (1000, np.uint8), (4, np.uint32)])
def test_tiff_samples_and_bits_are_checked_from_the_header_before_any_allocation(samples: int, dtype: type) -> None:
    """A 788 KB TIFF with 65535 samples per pixel was a MemoryError (500); 1000 samples took RSS to
    2.26 GB before its 415. Now both are refused from the header, with less than 1 MB allocated."""
    data = tiff_with_samples(samples, dtype, side=256)
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedMediaType):
            codecs.probe(data, 10**8)
        with pytest.raises(UnsupportedMediaType):
            codecs.decode(data, 10**8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20 + 2 * len(data), peak


def test_a_memory_error_while_decoding_is_out_of_memory_503(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(codecs, "_pixels", no_memory)
    with pytest.raises(OutOfMemory) as caught:
        codecs.decode(encode_pil(noisy_image(8, 8, 3), "PNG"), 10**6)
    assert caught.value.status == 503 and "Retry-After" in caught.value.headers
