"""Decoding and encoding keep bit depth, alpha, ICC and orientation; bad input maps to clear errors."""

from __future__ import annotations

import io
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from restore.service.errors import BadRequest, CorruptImage, PayloadTooLarge, UnsupportedMediaType
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
