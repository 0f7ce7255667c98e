"""Tiling must be invisible: same result as whole-image inference, same-shaped tiles, no seams."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from restore.core.metrics import psnr
from restore.core.tiling import FINE_GRANULE, MIN_TILE_OVERLAPS, TilePlan, blend_tile, extract_tile, pad_to_plan, plan_tiles, tile_side_for
from tests.conftest import MODELS_DIR, box_filter, noisy_image


def run_tiled(image: np.ndarray, plan: TilePlan, infer) -> np.ndarray:  # type: ignore[no-untyped-def]
    padded = pad_to_plan(image, plan)
    out = np.zeros((plan.height, plan.width, image.shape[2]), np.float32)
    for index in range(plan.count):
        tile = extract_tile(padded, plan, index, 1 / 255)
        blend_tile(out, infer(tile[None])[0], plan, index)
    return out


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (64, 64), (65, 129), (300, 211), (1536, 2048)])
def test_plan_covers_image_with_same_shaped_tiles_and_unit_weights(size: tuple[int, int]) -> None:
    plan = plan_tiles(*size, tile=128, margin=17, feather=16)
    coverage = np.zeros(size, np.float64)
    for index in range(plan.count):
        top, left = plan.origin(index)
        h, w = plan.tile_shape
        assert top + h <= plan.rows.length and left + w <= plan.cols.length
        coverage[top : top + h, left : left + w] += plan.weight(index)[: size[0] - top, : size[1] - left]
    for side, tile_side in zip(size, plan.tile_shape):
        assert tile_side == side if side <= 128 else tile_side <= 128
    np.testing.assert_allclose(coverage, 1.0, atol=1e-5)


@pytest.mark.parametrize("margin,multiple", [(20, 1), (17, 1), (110, 16)])
def test_large_images_get_the_fewest_tiles_each_no_larger_than_needed(margin: int, multiple: int) -> None:
    """Overlap work stays what the receptive field forces: no extra tile, no tile a granule too big."""
    overlap = 2 * margin + 16
    for length in range(1025, 12000, 7):
        axis = plan_tiles(length, 8, tile=1024, margin=margin, feather=16, multiple=multiple).rows
        count = len(axis.starts)
        assert count == math.ceil((axis.length - overlap) / (1024 - overlap))
        needed = math.ceil((axis.length + (count - 1) * overlap) / count)
        assert needed <= axis.size < needed + math.lcm(64, multiple)
    dncnn_2048 = plan_tiles(2048, 8, tile=1024, margin=20, feather=16).rows
    assert len(dncnn_2048.starts) * dncnn_2048.size <= 1.15 * 2048


def test_tiles_are_aligned_to_the_size_multiple() -> None:
    plan = plan_tiles(100, 1000, tile=256, margin=8, feather=8, multiple=16)
    assert plan.rows.length == 112 and plan.cols.length == 1008
    assert all(s % 16 == 0 for s in plan.rows.starts + plan.cols.starts)
    assert plan.tile_shape[0] % 16 == 0 and plan.tile_shape[1] % 16 == 0


def test_tile_smaller_than_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(500, 500, tile=32, margin=17, feather=8)


@pytest.mark.parametrize("size", [(1, 1), (2, 9), (33, 47), (129, 257), (511, 300)])
def test_tiled_box_filter_equals_whole_image(size: tuple[int, int]) -> None:
    """With a known receptive field the blend is exact, not just close."""
    radius = 5
    image = noisy_image(*size, channels=3)
    plan = plan_tiles(*size, tile=64, margin=radius, feather=4)
    tiled = run_tiled(image, plan, lambda b: box_filter(b, radius))
    whole = box_filter(image.transpose(2, 0, 1)[None].astype(np.float32) / 255, radius)[0].transpose(1, 2, 0)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_a_margin_smaller_than_the_receptive_field_is_detectable() -> None:
    """Guards the test above: an overlap that ignores the receptive field does leave differences."""
    image = noisy_image(200, 200)
    plan = plan_tiles(200, 200, tile=64, margin=0, feather=1)
    tiled = run_tiled(image, plan, lambda b: box_filter(b, 6))
    whole = box_filter(image.transpose(2, 0, 1)[None].astype(np.float32) / 255, 6)[0].transpose(1, 2, 0)
    assert np.abs(tiled - whole).max() > 1e-3



onnx_models = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def dncnn_session():  # type: ignore[no-untyped-def]

    path = MODELS_DIR / "dncnn-gray-s25.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (97, 131), (301, 257)])
def test_dncnn_tiled_matches_whole_image_on_8bit_output(dncnn_session, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    """Small tiles (96 px) force many tile borders even on small images."""
    image = noisy_image(*size, channels=1, seed=3)
    infer = lambda b: dncnn_session.run(None, {"input": b})[0]  # noqa: E731
    plan = plan_tiles(*size, tile=96, margin=17, feather=8)
    tiled = np.round(np.clip(run_tiled(image, plan, infer), 0, 1) * 255)
    whole = infer(image.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0].transpose(1, 2, 0)
    whole = np.round(np.clip(whole, 0, 1) * 255)
    assert psnr(tiled, whole) >= 50


def seam_ratio(out: np.ndarray, plan: TilePlan, margin: int, feather: int) -> float:
    """Mean |horizontal gradient| at tile borders and blend transitions over the mean elsewhere."""
    gradient = np.abs(np.diff(out, axis=1)).mean(axis=0)  # column c holds the step c -> c+1
    borders: set[int] = set()
    width = plan.tile_shape[1]
    for start in plan.cols.starts[1:]:
        borders.update({start - 1, start + margin - 1, start + margin + feather // 2, start + 2 * margin + feather - 1})
    for start in plan.cols.starts[:-1]:
        borders.add(start + width - 1)
    borders = {b for b in borders if 0 <= b < gradient.size}
    inside = np.delete(gradient, sorted(borders))
    return float(gradient[sorted(borders)].mean() / inside.mean())


def flat_noisy(height: int, width: int, seed: int) -> np.ndarray:
    """Statistically the same everywhere, so any difference at borders is the tiler's doing."""
    rng = np.random.default_rng(seed)
    return np.clip(128 + rng.normal(0, 25, (height, width, 1)), 0, 255).astype(np.uint8)


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_dncnn_tiled_output_has_no_seams(dncnn_session) -> None:  # type: ignore[no-untyped-def]
    image = flat_noisy(256, 600, seed=4)
    infer = lambda b: dncnn_session.run(None, {"input": b})[0]  # noqa: E731
    plan = plan_tiles(*image.shape[:2], tile=96, margin=17, feather=8)
    ratio = seam_ratio(run_tiled(image, plan, infer)[:, :, 0], plan, 17, 8)
    assert abs(ratio - 1) <= 0.05


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_seam_measure_sees_seams_of_naive_tiling(dncnn_session) -> None:  # type: ignore[no-untyped-def]
    """The measure above is able to fail: tiles without a receptive-field margin show their borders."""
    image = flat_noisy(256, 600, seed=4)
    infer = lambda b: dncnn_session.run(None, {"input": b})[0]  # noqa: E731
    plan = plan_tiles(*image.shape[:2], tile=96, margin=0, feather=1)
    ratio = seam_ratio(run_tiled(image, plan, infer)[:, :, 0], plan, 0, 1)
    assert abs(ratio - 1) > 0.05


@pytest.mark.parametrize(
    "speed,seconds,overlap,multiple,expected",
    [
        (150_000, 0.5, 56, 1, 256),  # DnCNN on 2 CPU cores: sqrt(75,000) = 273 -> 256 on the 64 px grid
        (150_000, 0.1, 56, 1, 256),  # the budget would allow 122 px; 4 overlaps (224) round up to 256
        (100_000, 0.5, 242, 16, 1024),  # HED's wide receptive field: 4 x 242 = 968 -> 1024, whatever the budget
        (720_000, 0.5, 80, 32, 576),  # the weather model: sqrt(360,000) = 600 -> 576
        (1e12, 0.5, 56, 1, 1024),  # a GPU: RESTORE_TILE_SIZE bounds the memory
        (150_000, 0.0, 56, 1, 1024),  # budget off
    ],
)
def test_tile_side_follows_the_time_budget_within_work_and_memory_bounds(
    speed: float, seconds: float, overlap: int, multiple: int, expected: int
) -> None:
    side = tile_side_for(speed, seconds, overlap=overlap, multiple=multiple, largest=1024)
    assert side == expected
    assert side % multiple == 0
    assert side == 1024 or side >= MIN_TILE_OVERLAPS * overlap


def test_a_model_s_smallest_tile_outranks_the_time_budget_but_not_the_memory_cap() -> None:
    """The weather model's ``min_tile``: at 2 CPU cores its budget gives 576 px tiles, in which a
    hazy sky's output departs from the whole image's; 1024 px keeps it; RESTORE_TILE_SIZE still caps."""
    assert tile_side_for(720_000, 0.5, overlap=192, multiple=16, largest=1024) == 768  # 4 overlaps
    assert tile_side_for(720_000, 0.5, overlap=192, multiple=16, largest=1024, smallest=1024) == 1024
    assert tile_side_for(720_000, 0.5, overlap=80, multiple=16, largest=2048, smallest=1000) == 1024  # on the grid
    assert tile_side_for(720_000, 0.5, overlap=80, multiple=16, largest=512, smallest=1024) == 512


def test_plan_work_counts_every_computed_pixel_overlap_included() -> None:
    plan = plan_tiles(2048, 1536, tile=1024, margin=20, feather=16)
    assert plan.work == plan.count * plan.tile_shape[0] * plan.tile_shape[1]
    assert 2048 * 1536 < plan.work < 1.3 * 2048 * 1536
    assert plan_tiles(100, 80, tile=1024, margin=20, feather=16).work == 100 * 80


def test_a_fine_granule_shrinks_tiles_closer_to_what_the_image_needs() -> None:
    """One tile per batch (CPU): tiles need not share a shape across requests, so 512 px in 256 px
    tiles takes three 208 px tiles per axis (1.49x the pixels) rather than three of 256 (2.25x)."""
    coarse = plan_tiles(512, 512, tile=256, margin=20, feather=16)
    fine = plan_tiles(512, 512, tile=256, margin=20, feather=16, granule=FINE_GRANULE)
    assert coarse.tile_shape == (256, 256) and fine.tile_shape == (208, 208)
    assert fine.count == coarse.count == 9 and fine.work < 0.7 * coarse.work


# ---------------------------------------------------------------- buckets: small images share shapes
SMALL_SIZES = [(h, w) for h in (17, 64, 100, 200) for w in (33, 65, 130, 255)]  # 16 sizes below a 256 px tile


def test_buckets_give_16_small_sizes_a_few_shared_shapes_and_leave_big_images_alone() -> None:
    own = {plan_tiles(h, w, tile=256, margin=3, feather=4).tile_shape for h, w in SMALL_SIZES}
    bucketed = [plan_tiles(h, w, tile=256, margin=3, feather=4, bucket=64) for h, w in SMALL_SIZES]
    assert len(own) == 16  # without buckets, 16 sizes are 16 shapes: no two can share a batch
    assert {p.tile_shape for p in bucketed} <= {(a, b) for a in (64, 128, 192, 256) for b in (64, 128, 192, 256)}
    close = {plan_tiles(h, w, tile=256, margin=3, feather=4, bucket=64).tile_shape for h in (40, 50, 60, 63) for w in (70, 90, 100, 120)}
    assert close == {(64, 128)}  # 16 sizes within one grid cell: one shape, one batch
    assert all(p.count == 1 and p.tile_shape[0] - p.height < 64 and p.tile_shape[1] - p.width < 64 for p in bucketed)
    # ...and many more sizes still fall into those 16 shapes: every size 1..256 per axis maps to 4 lengths
    assert {plan_tiles(h, 5, tile=256, margin=3, feather=4, bucket=64).tile_shape[0] for h in range(1, 257)} == {64, 128, 192, 256}
    big = (700, 1100)
    with_buckets, without = plan_tiles(*big, tile=256, margin=3, feather=4, bucket=64), plan_tiles(*big, tile=256, margin=3, feather=4)
    assert (with_buckets.tile_shape, with_buckets.rows.starts, with_buckets.cols.starts) == (
        without.tile_shape, without.rows.starts, without.cols.starts)


@pytest.mark.parametrize("height,width", SMALL_SIZES[::5] + [(1, 1), (3, 250)])
def test_bucketed_output_is_cropped_and_equals_whole_image_away_from_the_padded_edges(height: int, width: int) -> None:
    """The box filter sees reflected pixels instead of zeros only within its radius of the bottom
    and right edges; everywhere else the bucketed output is the whole-image one."""
    radius = 3
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 1), dtype=np.uint8)
    plan = plan_tiles(height, width, tile=256, margin=radius, feather=4, bucket=64)
    padded = pad_to_plan(image, plan)
    assert padded.shape[:2] == plan.tile_shape
    out = np.zeros((height, width, 1), np.float32)
    blend_tile(out, box_filter(extract_tile(padded, plan, 0, 1 / 255)[None], radius)[0], plan, 0)
    whole = box_filter((image.transpose(2, 0, 1)[None] / 255).astype(np.float32), radius)[0].transpose(1, 2, 0)
    # equal up to float32 summation order (the box filter sums a different-sized array)
    np.testing.assert_allclose(out[: height - radius, : width - radius], whole[: height - radius, : width - radius], atol=1e-6)
    if height > radius and width > radius:
        assert out.shape == whole.shape and np.abs(out - whole).max() < 1
