"""Camera-like noise for the colour denoiser: signal-dependent sensor noise, gamma, JPEG.

What a phone or camera JPEG carries, in the order it happens:

1. **Poisson-Gaussian sensor noise in linear light** (Foi et al., IEEE TIP 2008): the clean sRGB
   image is linearised (IEC 61966-2-1 curve), and each value ``x`` gets noise of variance
   ``shot * x + read``, the Gaussian approximation of photon (Poisson) plus read-out noise; the
   result is clipped to the sensor's [0, 1]. The levels follow Brooks et al. (CVPR 2019,
   "Unprocessing images for learned raw denoising"): ``log(shot)`` uniform, ``log(read)`` on the
   line ``2.18 log(shot) + 1.20`` plus N(0, 0.26); our shot range ``SHOT_RANGE`` reaches 2.5x
   their upper end. Measured std on the 8-bit scale (tests/training/dncnn/test_camera_noise.py):
   shot 0.01 gives about 14 at mid-grey and 20 in dark tones (sRGB 0.2), shot 0.03 about 29 and
   34. Simplifications: noise is independent per RGB channel (no Bayer mosaic or demosaicking, no
   colour-correction matrix), and negative linear values are clipped at once (no black level).
2. **Gamma**: back to sRGB, which stretches the shadows: dark regions end up noisier than bright
   ones, unlike Gaussian noise.
3. **8 bit, then JPEG** at quality ``QUALITY_RANGE`` with 4:2:0 or 4:4:4 chroma (Pillow's libjpeg,
   as ``restore.service.images.codecs`` decodes). 4:2:0 averages the chroma over 2x2 pixels, so what is left of
   the chroma noise is blotchy: the Gaussian blind model reads it as image content.

Also plain Gaussian noise (CDnCNN-B's own: std uniform in [0, 55] / 255, added in float and not
clipped), alone or followed by 8 bit and JPEG. ``FAMILIES`` are the four mixtures of a training
batch (``camera_batch``: plain Gaussian at a chosen share, by default a quarter, the other three
equally); ``TEST_FAMILIES`` the fixed settings of the realistic CBSD68 test set
(``training.dncnn.camera_testset``).

Images here are float arrays in [0, 1], ``(..., H, W, 3)`` for the pixel functions and
``(N, 3, H, W)`` for ``camera_batch``; every function draws from the ``numpy.random.Generator``
it is given and nothing else, so a batch is a pure function of its seed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from restore.core.pixels import to_pixels

__all__ = [
    "DESCRIPTION", "SHOT_RANGE", "QUALITY_RANGE", "GAUSSIAN_RANGE", "FAMILIES", "TestFamily", "TEST_FAMILIES",
    "srgb_to_linear", "linear_to_srgb", "read_variance", "poisson_gaussian", "jpeg",
    "encode_jpeg", "sample_shot", "camera_noisy", "camera_batch",
]

FloatArray = npt.NDArray[np.float64]

#: Shot-noise gain (variance per unit of linear signal): log-uniform over this range.
SHOT_RANGE = (1e-4, 3e-2)
#: JPEG quality: uniform integers, both ends included.
QUALITY_RANGE = (60, 98)
#: Plain Gaussian std on the 8-bit scale: uniform (CDnCNN-B's range).
GAUSSIAN_RANGE = (0.0, 55.0)
#: Brooks et al.'s read-noise line: log(read) = SLOPE * log(shot) + INTERCEPT + N(0, SPREAD).
READ_SLOPE, READ_INTERCEPT, READ_SPREAD = 2.18, 1.20, 0.26
#: The four noise families of a training batch, each drawn with probability 1/4 per patch.
FAMILIES = ("gaussian", "gaussian-jpeg", "poisson-gaussian", "poisson-gaussian-jpeg")
#: What a model trained on camera_batch saw, for its manifest entry (export.dncnn_trained).
DESCRIPTION = (
    "camera noise (training/dncnn/camera_noise.py), per patch one of four families: plain Gaussian "
    f"sigma uniform in [{GAUSSIAN_RANGE[0]:g}, {GAUSSIAN_RANGE[1]:g}] (at the run's gaussian_share), "
    "and in equal shares of the rest: the same Gaussian, 8 bit, then JPEG; "
    f"Poisson-Gaussian in linear light (shot log-uniform in [{SHOT_RANGE[0]:g}, {SHOT_RANGE[1]:g}], read "
    "variance on Brooks et al. 2019's line), sRGB gamma, 8 bit; the same, then JPEG; JPEG quality "
    f"uniform in [{QUALITY_RANGE[0]}, {QUALITY_RANGE[1]}], 4:2:0 or 4:4:4 chroma, random block phase"
)
#: Pillow's subsampling codes.
SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}
#: JPEG works in 16x16 macroblocks (4:2:0): a patch is placed at a random offset in that grid.
MACROBLOCK = 16


def srgb_to_linear(srgb: FloatArray) -> FloatArray:
    """IEC 61966-2-1: sRGB values in [0, 1] to linear light."""
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: FloatArray) -> FloatArray:
    """Inverse of ``srgb_to_linear`` on [0, 1]."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def read_variance(shot: float, rng: np.random.Generator | None = None) -> float:
    """Read-noise variance on Brooks et al.'s line for ``shot`` (its spread drawn when ``rng``)."""
    spread = READ_SPREAD * rng.standard_normal() if rng is not None else 0.0
    return math.exp(READ_SLOPE * math.log(shot) + READ_INTERCEPT + spread)


def sample_shot(rng: np.random.Generator) -> float:
    low, high = SHOT_RANGE
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def poisson_gaussian(clean: FloatArray, shot: float, read: float, rng: np.random.Generator) -> FloatArray:
    """Sensor noise of variance ``shot * x + read`` on the linear values ``x`` of sRGB ``clean``;
    clipped to the sensor's range and back to sRGB (float, not yet 8 bit)."""
    linear = srgb_to_linear(clean)
    noisy = linear + np.sqrt(shot * linear + read) * rng.standard_normal(clean.shape)
    return linear_to_srgb(noisy)


def jpeg(image: npt.NDArray[np.uint8], quality: int, subsampling: str,
         offset: tuple[int, int] = (0, 0)) -> npt.NDArray[np.uint8]:
    """``image`` (H x W x 3 uint8) through a JPEG file and back.

    ``offset`` places the image that many pixels into the 16x16 block grid (mirror padding
    around it), so training patches meet block edges at every phase, as crops of a photo do.
    """
    top, left = offset
    height, width = image.shape[:2]
    bottom = -(top + height) % MACROBLOCK
    right = -(left + width) % MACROBLOCK
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="symmetric")
    encoded = encode_jpeg(padded, quality, subsampling)
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    return decoded[top:top + height, left:left + width]


def encode_jpeg(image: npt.NDArray[np.uint8], quality: int, subsampling: str) -> bytes:
    """The JPEG file of ``image`` (H x W x 3 uint8), baseline, no metadata."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=int(quality), subsampling=SUBSAMPLING[subsampling])
    return buffer.getvalue()


def _random_jpeg(image: FloatArray, rng: np.random.Generator) -> FloatArray:
    quality = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))
    subsampling = ("4:2:0", "4:4:4")[int(rng.integers(2))]
    offset = (int(rng.integers(MACROBLOCK)), int(rng.integers(MACROBLOCK)))
    return jpeg(to_pixels(image), quality, subsampling, offset) / 255.0


def camera_noisy(clean: FloatArray, family: str, rng: np.random.Generator) -> FloatArray:
    """One H x W x 3 image in [0, 1] with noise of ``family`` (one of FAMILIES), levels drawn."""
    if family.startswith("gaussian"):
        sigma = rng.uniform(*GAUSSIAN_RANGE) / 255.0
        noisy = clean + sigma * rng.standard_normal(clean.shape)
    elif family.startswith("poisson-gaussian"):
        shot = sample_shot(rng)
        noisy = poisson_gaussian(clean, shot, read_variance(shot, rng), rng)
        if not family.endswith("jpeg"):
            noisy = to_pixels(noisy) / 255.0  # a camera writes 8 bits
    else:
        raise ValueError(f"unknown noise family {family!r}; known: {FAMILIES}")
    return _random_jpeg(noisy, rng) if family.endswith("jpeg") else noisy


def camera_batch(
    clean: npt.NDArray[np.float32], rng: np.random.Generator, gaussian_share: float = 0.25
) -> npt.NDArray[np.float32]:
    """Noisy copies of ``clean`` (N x 3 x H x W, [0, 1]): each image's family drawn from FAMILIES,
    plain Gaussian with probability ``gaussian_share`` and the other three equally, then its levels."""
    if clean.ndim != 4 or clean.shape[1] != 3:
        raise ValueError(f"camera noise needs N x 3 x H x W colour patches, got {clean.shape}")
    if not 0 <= gaussian_share <= 1:
        raise ValueError(f"gaussian_share must be in [0, 1], got {gaussian_share}")
    others = (1 - gaussian_share) / (len(FAMILIES) - 1)
    families = rng.choice(len(FAMILIES), size=len(clean), p=[gaussian_share] + [others] * (len(FAMILIES) - 1))
    noisy = np.empty_like(clean)
    for index, family in enumerate(families):
        image = clean[index].transpose(1, 2, 0).astype(np.float64)
        noisy[index] = camera_noisy(image, FAMILIES[family], rng).transpose(2, 0, 1)
    return noisy


@dataclass(frozen=True)
class TestFamily:
    """One fixed setting of the realistic test set: sensor noise and/or Gaussian, then JPEG."""

    name: str
    gaussian: float = 0.0  # std on the 8-bit scale
    shot: float = 0.0  # 0: no sensor noise
    quality: int | None = None  # None: PNG (8 bit, no JPEG)
    subsampling: str = "4:2:0"

    @property
    def suffix(self) -> str:
        return ".png" if self.quality is None else ".jpg"

    def file_bytes(self, clean: npt.NDArray[np.uint8], rng: np.random.Generator) -> bytes:
        """The noisy file of ``clean`` (H x W x 3 uint8): 8-bit PNG, or the JPEG itself."""
        image = clean.astype(np.float64) / 255.0
        if self.shot:
            image = poisson_gaussian(image, self.shot, read_variance(self.shot), rng)
        if self.gaussian:
            image = image + self.gaussian / 255.0 * rng.standard_normal(image.shape)
        noisy = to_pixels(image)
        if self.quality is not None:
            return encode_jpeg(noisy, self.quality, self.subsampling)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "PNG")
        return buffer.getvalue()


#: The realistic CBSD68 families: shot 0.01 puts mid-grey at about sigma 14 and dark tones near 20
#: (8-bit scale); JPEG at quality 90 with 4:2:0 chroma is a typical camera or phone file.
TEST_FAMILIES = (
    TestFamily("gaussian25-jpeg90-420", gaussian=25.0, quality=90),
    TestFamily("poisson-gaussian", shot=0.01),
    TestFamily("poisson-gaussian-jpeg90-420", shot=0.01, quality=90),
)
