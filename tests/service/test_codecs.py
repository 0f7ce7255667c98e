"""Decoding and encoding keep bit depth, alpha, ICC and orientation; bad input maps to clear errors."""

from __future__ import annotations

import io
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from service import codecs
from service.errors import BadRequest, CorruptImage, PayloadTooLarge, UnsupportedMediaType
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
