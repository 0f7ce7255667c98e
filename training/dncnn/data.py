"""DnCNN training data: the authors' patch extraction and augmentation, noisy batches.

Patches follow the authors' ``generate_patches`` (``TrainingCodes/dncnn_pytorch/data_generator.py``
and the MatConvNet ``GenerateData_*.m`` of https://github.com/cszn/DnCNN):

* each training image is rescaled by ``scales`` (1, 0.9, 0.8, 0.7; bicubic, here Pillow's, which
  antialiases like MATLAB's ``imresize``), and ``patch_size`` squares are cut at ``stride``
  (40 and 10 for DnCNN-S: 596 patches per 180x180 Train400 image, 238,400 in all, close to the
  paper's 128 x 1600);
* every patch gets one of the 8 dihedral modes (``AUGMENT_MODES``: identity, flips, rotations by
  90/180/270 degrees and their flips), drawn at random once, at extraction, as the authors do;
* ``max_patches`` keeps a seeded random subset, the same share of every image (the paper crops
  128 x 3000 patches for the blind models rather than every stride-10 patch of BSD432).

Patch sets are ``uint8`` arrays ``(N, C, p, p)``; images are ``uint8`` ``HxW`` or ``HxWx3`` as
read by ``training.dncnn.images.load_set``. Noise is drawn per batch, never stored:
``PatchSampler.batch(i)`` picks and noises the batch of iteration ``i`` from generators seeded with
``(seed, i)``, so training data is a pure function of the iteration and a resumed run sees exactly
the batches an uninterrupted one would.

Colour training set (CDnCNN-B, the paper's "BSD432"): the 500 BSDS500 images (train+val+test)
minus the 68 that form CBSD68, matched by image id (file stem). Checked by pixels: each CBSD68 PNG
equals the BSDS500 image of its id exactly (all 68 are validation images), so no test image is
left in the training set under another name (tests/training/dncnn/test_data.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from training.dncnn.camera_noise import camera_batch
from training.dncnn.images import load_images, load_set

__all__ = [
    "AUGMENT_MODES", "NOISE_MODELS", "augment", "augment_batch", "extract_patches", "build_patch_set",
    "bsd432_files", "load_training_images", "PatchSampler",
]

AUGMENT_MODES = 8
#: ``PatchSampler``'s noise: the paper's Gaussian, or camera-like (``training.dncnn.camera_noise``).
NOISE_MODELS = ("gaussian", "camera")
Images = Sequence[tuple[str, np.ndarray]]


def augment(patch: np.ndarray, mode: int) -> np.ndarray:
    """The authors' ``data_aug``: mode 0-7 on the last two axes (H, W) of any array."""
    if not 0 <= mode < AUGMENT_MODES:
        raise ValueError(f"augmentation mode must be in [0, {AUGMENT_MODES}), got {mode}")
    out = np.rot90(patch, k=mode // 2, axes=(-2, -1))
    return np.flip(out, axis=-2) if mode % 2 else out


def augment_batch(patches: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """``augment(patches[i], modes[i])`` for every square patch of ``(N, C, p, p)``."""
    if patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"patches must be square, got {patches.shape[-2:]}")
    out = np.empty_like(patches)
    for mode in range(AUGMENT_MODES):
        chosen = modes == mode
        if chosen.any():
            out[chosen] = augment(patches[chosen], mode)
    return out


def _rescale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1:
        return image
    h, w = image.shape[:2]
    size = (int(w * scale), int(h * scale))  # the authors' int() truncation
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def extract_patches(
    image: np.ndarray, patch_size: int, stride: int, scales: Sequence[float]
) -> np.ndarray:
    """Every ``patch_size`` square at ``stride`` of ``image`` at each scale: uint8 (N, C, p, p).

    ``image`` is ``HxW`` (gray) or ``HxWxC``; patches are in scale order, then row-major.
    """
    planes = image[:, :, None] if image.ndim == 2 else image
    parts = []
    for scale in scales:
        scaled = _rescale(image, scale)
        scaled = scaled[:, :, None] if scaled.ndim == 2 else scaled
        if min(scaled.shape[:2]) < patch_size:
            continue
        windows = sliding_window_view(scaled, (patch_size, patch_size), axis=(0, 1))
        windows = windows[::stride, ::stride]  # (nh, nw, C, p, p)
        parts.append(windows.reshape(-1, planes.shape[2], patch_size, patch_size))
    if not parts:
        return np.empty((0, planes.shape[2], patch_size, patch_size), np.uint8)
    return np.ascontiguousarray(np.concatenate(parts))


def build_patch_set(
    images: Images,
    patch_size: int,
    stride: int,
    scales: Sequence[float],
    *,
    seed: int,
    max_patches: int | None = None,
) -> np.ndarray:
    """Augmented patches of all ``images``: uint8 ``(N, C, p, p)``, seeded.

    With ``max_patches`` each image contributes a random ``ceil(max_patches / len(images))`` of its
    patches and the result is cut to ``max_patches``.
    """
    rng = np.random.default_rng([seed, 0x9A7C])
    per_image = math.ceil(max_patches / len(images)) if max_patches else None
    parts = []
    for _, image in images:
        patches = extract_patches(image, patch_size, stride, scales)
        if per_image is not None and len(patches) > per_image:
            patches = patches[np.sort(rng.choice(len(patches), per_image, replace=False))]
        parts.append(augment_batch(patches, rng.integers(0, AUGMENT_MODES, len(patches))))
    out = np.concatenate(parts)
    return out[:max_patches] if max_patches else out


def bsd432_files(bsds500_images: Path, cbsd68: Path) -> list[Path]:
    """BSDS500 train+val+test images whose id is not in CBSD68 (the paper's colour training set)."""
    excluded = {p.stem for p in cbsd68.iterdir()}
    files = sorted(
        (p for split in ("train", "val", "test") for p in (bsds500_images / split).glob("*.jpg")),
        key=lambda p: p.name,
    )
    kept = [p for p in files if p.stem not in excluded]
    if len(files) - len(kept) != len(excluded):
        raise ValueError(f"{cbsd68}: not every CBSD68 image was found in {bsds500_images}")
    return kept


def load_training_images(
    train_set: str, data_root: Path, channels: int
) -> list[tuple[str, np.ndarray]]:
    """``Train400`` (``data_root/denoise/Train400``) or ``BSD432`` (from ``data_root/bsds500``)."""
    if train_set == "Train400":
        return load_set(data_root / "denoise" / "Train400", channels, None)
    if train_set == "BSD432":
        files = bsd432_files(data_root / "bsds500" / "images", data_root / "denoise" / "CBSD68")
        return load_images(files, channels)
    raise ValueError(f"unknown training set {train_set!r}; known: Train400, BSD432")


class PatchSampler:
    """Batches of a patch set as a pure function of the iteration.

    Iteration ``i`` takes batch ``i mod B`` of pass ``i // B`` (``B = N // batch_size``, the
    remainder dropped as the authors do), each pass a seeded permutation of the patches. With
    ``noise="gaussian"`` the std is ``sigma_range[0]`` when both ends are equal (DnCNN-S), else
    uniform per patch over the range (DnCNN-B, [0, 55]), in the 8-bit scale. With
    ``noise="camera"`` each patch gets one of ``training.dncnn.camera_noise.FAMILIES`` (sensor
    noise, gamma, JPEG, or plain Gaussian with probability ``gaussian_share``), and the noise is
    the noisy patch minus the clean one.
    """

    def __init__(
        self, patches: np.ndarray, batch_size: int, sigma_range: tuple[float, float], seed: int,
        noise: str = "gaussian", gaussian_share: float = 0.25,
    ) -> None:
        if patches.ndim != 4 or patches.dtype != np.uint8:
            raise ValueError(f"need uint8 (N, C, p, p) patches, got {patches.dtype}{patches.shape}")
        if len(patches) < batch_size:
            raise ValueError(f"{len(patches)} patches cannot fill a batch of {batch_size}")
        low, high = sigma_range
        if not 0 <= low <= high:
            raise ValueError(f"bad sigma range {sigma_range}")
        if noise not in NOISE_MODELS:
            raise ValueError(f"unknown noise model {noise!r}; known: {NOISE_MODELS}")
        if noise == "camera" and patches.shape[1] != 3:
            raise ValueError("camera noise is for colour patches")
        self.noise = noise
        self.gaussian_share = gaussian_share
        self.patches = patches
        self.batch_size = batch_size
        self.sigma_range = (float(low), float(high))
        self.seed = seed
        self.batches_per_pass = len(patches) // batch_size
        self._order: tuple[int, np.ndarray] | None = None

    def _permutation(self, pass_index: int) -> np.ndarray:
        if self._order is None or self._order[0] != pass_index:
            rng = np.random.default_rng([self.seed, 0x5A3D, pass_index])
            self._order = (pass_index, rng.permutation(len(self.patches)))
        return self._order[1]

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, noise) float32 ``(batch, C, p, p)`` tensors, clean in [0, 1]."""
        pass_index, position = divmod(iteration, self.batches_per_pass)
        order = self._permutation(pass_index)
        index = np.sort(order[position * self.batch_size:(position + 1) * self.batch_size])
        clean = torch.from_numpy(self.patches[index]).float().div_(255.0)
        if self.noise == "camera":
            rng = np.random.default_rng([self.seed, 0xCA3E, iteration])
            noisy = torch.from_numpy(camera_batch(clean.numpy(), rng, self.gaussian_share))
            return clean, noisy - clean
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, 0x401E, iteration]).generate_state(1)[0])
        )
        low, high = self.sigma_range
        sigma = torch.full((len(index), 1, 1, 1), low)
        if high > low:
            sigma = low + (high - low) * torch.rand(len(index), 1, 1, 1, generator=generator)
        noise = torch.randn(clean.shape, generator=generator) * (sigma / 255.0)
        return clean, noise
