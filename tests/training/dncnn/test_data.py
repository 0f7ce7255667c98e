"""training/dncnn/data.py: patch extraction, the 8 augmentation modes, BSD432, seeded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.dncnn.data import (
    AUGMENT_MODES,
    PatchSampler,
    augment,
    augment_batch,
    bsd432_files,
    build_patch_set,
    extract_patches,
    load_training_images,
)

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not (DATA / "denoise").is_dir(), reason="../shared/data absent")
SCALES = (1.0, 0.9, 0.8, 0.7)


def _image(h: int, w: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_augment_modes_are_the_eight_dihedral_maps() -> None:
    patch = np.arange(9).reshape(1, 3, 3)
    results = [augment(patch, mode) for mode in range(AUGMENT_MODES)]
    np.testing.assert_array_equal(results[0], patch)
    np.testing.assert_array_equal(results[1], patch[:, ::-1])  # flipud
    np.testing.assert_array_equal(results[2], np.rot90(patch, axes=(1, 2)))  # rot90
    np.testing.assert_array_equal(results[3], np.rot90(patch, axes=(1, 2))[:, ::-1])
    assert len({r.tobytes() for r in results}) == AUGMENT_MODES
    with pytest.raises(ValueError):
        augment(patch, AUGMENT_MODES)


def test_augment_batch_applies_each_patch_its_mode() -> None:
    patches = np.stack([_image(5, 5, seed=i)[None] for i in range(16)])
    modes = np.arange(16) % AUGMENT_MODES
    out = augment_batch(patches, modes)
    assert out.shape == patches.shape == (16, 1, 5, 5) and out.dtype == np.uint8
    for i in range(16):
        np.testing.assert_array_equal(out[i], augment(patches[i], int(modes[i])))


def test_extract_patches_counts_and_layout() -> None:
    image = _image(180, 180)
    patches = extract_patches(image, 40, 10, SCALES)
    # 180 -> 15x15, 162 -> 13x13, 144 -> 11x11, 126 -> 9x9 positions at stride 10.
    assert patches.shape == (225 + 169 + 121 + 81, 1, 40, 40)
    assert patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[0, 0], image[:40, :40])
    np.testing.assert_array_equal(patches[16, 0], image[10:50, 10:50])  # row 1, column 1
    color = extract_patches(_image(60, 70, channels=3), 50, 10, (1.0,))
    assert color.shape == (2 * 3, 3, 50, 50)
    expected = _image(60, 70, channels=3)[:50, 20:70].transpose(2, 0, 1)
    np.testing.assert_array_equal(color[2], expected)  # row 0, column 2
    assert extract_patches(_image(30, 30), 40, 10, (1.0,)).shape == (0, 1, 40, 40)


def test_build_patch_set_is_seeded_and_capped() -> None:
    images = [(f"{i}.png", _image(60, 60, seed=i)) for i in range(3)]
    full = build_patch_set(images, 40, 10, (1.0,), seed=0)
    assert full.shape == (3 * 9, 1, 40, 40)
    np.testing.assert_array_equal(full, build_patch_set(images, 40, 10, (1.0,), seed=0))
    assert not np.array_equal(full, build_patch_set(images, 40, 10, (1.0,), seed=1))
    capped = build_patch_set(images, 40, 10, (1.0,), seed=0, max_patches=10)
    assert capped.shape == (10, 1, 40, 40)


def test_bsd432_excludes_cbsd68_by_id(tmp_path: Path) -> None:
    images, cbsd = tmp_path / "images", tmp_path / "CBSD68"
    cbsd.mkdir()
    for split, ids in {"train": ["1", "2"], "val": ["3", "4"], "test": ["5"]}.items():
        (images / split).mkdir(parents=True)
        for image_id in ids:
            Image.fromarray(_image(8, 8, 3)).save(images / split / f"{image_id}.jpg")
    for image_id in ("3", "4"):
        Image.fromarray(_image(8, 8, 3)).save(cbsd / f"{image_id}.png")
    assert [p.name for p in bsd432_files(images, cbsd)] == ["1.jpg", "2.jpg", "5.jpg"]
    Image.fromarray(_image(8, 8, 3)).save(cbsd / "9.png")
    with pytest.raises(ValueError, match="CBSD68"):
        bsd432_files(images, cbsd)


def test_sampler_batches_are_a_function_of_the_iteration() -> None:
    patches = build_patch_set([("a", _image(80, 80))], 40, 10, (1.0,), seed=0)  # 25 patches
    sampler = PatchSampler(patches, batch_size=8, sigma_range=(25, 25), seed=0)
    assert sampler.batches_per_pass == 3
    clean, noise = sampler.batch(4)
    assert clean.shape == noise.shape == (8, 1, 40, 40)
    assert 0 <= float(clean.min()) and float(clean.max()) <= 1
    again = PatchSampler(patches, batch_size=8, sigma_range=(25, 25), seed=0).batch(4)
    assert all(bool((a == b).all()) for a, b in zip((clean, noise), again))
    assert not bool((sampler.batch(5)[1] == noise).all())
    # One pass visits 24 distinct patches (the 25th is the dropped remainder).
    seen = np.concatenate([sampler.batch(i)[0].reshape(8, -1).numpy() for i in range(3)])
    assert len({row.tobytes() for row in seen}) == 24
    assert abs(float(noise.std()) * 255 - 25) < 1.5


def test_sampler_blind_noise_levels_vary_per_patch() -> None:
    patches = np.full((64, 1, 40, 40), 128, np.uint8)
    _, noise = PatchSampler(patches, 64, (0, 55), seed=0).batch(0)
    stds = noise.flatten(1).std(dim=1).numpy() * 255
    assert stds.min() >= 0 and stds.max() <= 58 and stds.std() > 5


@pytest.mark.shared
@needs_data
def test_train400_gives_the_authors_patch_count() -> None:
    images = load_training_images("Train400", DATA, 1)
    assert len(images) == 400 and images[0][1].shape == (180, 180)
    assert extract_patches(images[0][1], 40, 10, SCALES).shape == (596, 1, 40, 40)


@pytest.mark.shared
@needs_data
def test_bsd432_from_bsds500() -> None:
    files = bsd432_files(DATA / "bsds500" / "images", DATA / "denoise" / "CBSD68")
    assert len(files) == 432


@needs_data
def test_cbsd68_is_pixel_identical_to_the_bsds500_images_of_its_ids() -> None:
    """So excluding CBSD68 by id (bsd432_files) really keeps every test image out of BSD432."""
    images = DATA / "bsds500" / "images"
    by_id = {p.stem: p for p in images.rglob("*.jpg")}
    for path in sorted((DATA / "denoise" / "CBSD68").iterdir()):
        original = np.asarray(Image.open(by_id[path.stem]).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), original, err_msg=path.name)
    kept = {p.stem for p in bsd432_files(images, DATA / "denoise" / "CBSD68")}
    assert len(kept) == 432 and not kept & {p.stem for p in (DATA / "denoise" / "CBSD68").iterdir()}


def test_camera_sampler_is_seeded_and_needs_colour() -> None:
    patches = build_patch_set([("a", _image(80, 80, 3))], 40, 10, (1.0,), seed=0)
    sampler = PatchSampler(patches, batch_size=8, sigma_range=(0, 55), seed=0, noise="camera")
    clean, noise = sampler.batch(2)
    again_clean, again_noise = sampler.batch(2)
    assert torch.equal(noise, again_noise) and clean.shape == noise.shape == (8, 3, 40, 40)
    assert float((clean + noise).min()) > -1.2 and float((clean + noise).max()) < 2.2  # 5 sigma of 55/255
    with pytest.raises(ValueError, match="colour"):
        PatchSampler(build_patch_set([("a", _image(80, 80))], 40, 10, (1.0,), seed=0), 8, (0, 55), 0, noise="camera")
    with pytest.raises(ValueError, match="noise model"):
        PatchSampler(patches, 8, (0, 55), 0, noise="speckle")
