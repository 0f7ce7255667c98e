"""training/hed/bsds.py: correspondence matching on cases of known F (and against the benchmark's own
correspondPixels where pyEdgeEval is installed), the per-image counts and their cache, and the
ODS/OIS/AP arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from training.hed.bsds import THRESHOLDS, GroundTruth, evaluate_image, match_boundaries, summarize


def _line(shape: tuple[int, int], row: int, start: int, stop: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, start:stop] = True
    return mask


def _f(pred: np.ndarray, gt: np.ndarray, max_dist: float = 0.0075) -> float:
    matched_pred, matched_gt = match_boundaries(pred, gt, max_dist)
    recall, precision = matched_gt.sum() / gt.sum(), matched_pred.sum() / pred.sum()
    return 2 * recall * precision / (recall + precision) if recall + precision else 0.0


def test_identical_maps_match_completely() -> None:
    gt = _line((100, 100), 50, 10, 90)
    matched_pred, matched_gt = match_boundaries(gt, gt)
    assert matched_pred.sum() == matched_gt.sum() == 80
    assert _f(gt, gt) == 1.0


def test_within_and_beyond_max_dist() -> None:
    # Diagonal of 100 x 100 is 141.4 px; maxDist 0.0075 of it is 1.06 px.
    gt = _line((100, 100), 50, 10, 90)
    assert _f(_line((100, 100), 51, 10, 90), gt) == 1.0  # 1 px away
    assert _f(_line((100, 100), 52, 10, 90), gt) == 0.0  # 2 px away
    assert _f(_line((100, 100), 52, 10, 90), gt, max_dist=0.02) == 1.0  # 2.8 px allowed


def test_half_the_prediction_matches() -> None:
    gt = _line((100, 100), 50, 10, 30)  # 20 annotated pixels
    pred = _line((100, 100), 50, 10, 50)  # 40 predicted, 20 of them on the annotation
    matched_pred, matched_gt = match_boundaries(pred, gt)
    assert matched_gt.sum() == 20 and matched_pred.sum() == 20
    assert _f(pred, gt) == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_matching_is_one_to_one_and_maximal() -> None:
    # A double predicted line next to a single annotation: only one pixel per annotated pixel.
    gt = _line((60, 60), 30, 5, 55)
    pred = _line((60, 60), 30, 5, 55) | _line((60, 60), 31, 5, 55)
    matched_pred, matched_gt = match_boundaries(pred, gt, max_dist=0.02)
    assert matched_gt.sum() == 50 and matched_pred.sum() == 50
    # The cheapest maximum matching takes the coincident pixels.
    assert matched_pred[30, 5:55].all() and not matched_pred[31].any()
    # A maximum matching needs an augmenting path: greedy nearest-first would match only one.
    gt2 = np.zeros((60, 60), dtype=bool)
    gt2[30, 30] = gt2[30, 32] = True
    pred2 = np.zeros((60, 60), dtype=bool)
    pred2[30, 31] = pred2[30, 33] = True  # (30,31) is 1 px from both, (30,33) only from (30,32)
    matched_pred, matched_gt = match_boundaries(pred2, gt2, max_dist=0.02)
    assert matched_pred.sum() == matched_gt.sum() == 2


def test_agrees_with_correspond_pixels_where_available() -> None:
    """The benchmark's own C++ (``pyEdgeEval``), when installed, on random boundary-like maps."""
    correspond = pytest.importorskip("pyEdgeEval._lib").correspond_pixels
    rng = np.random.default_rng(0)
    for seed in range(3):
        gt = _line((80, 120), 40, 5, 115) | _line((80, 120), 10 + seed, 20, 90)
        pred = (rng.random((80, 120)) < 0.03) | np.roll(gt, seed, axis=0)
        m1, m2, _, _ = correspond(pred, gt, 0.0075)
        matched_pred, matched_gt = match_boundaries(pred, gt)
        assert abs(int(matched_gt.sum()) - int((m2 > 0).sum())) <= 1
        assert abs(int(matched_pred.sum()) - int((m1 > 0).sum())) <= 1


def test_evaluate_image_counts_and_cache() -> None:
    gt = _line((64, 64), 32, 8, 56)
    truths = [GroundTruth(gt, 0.0075 * np.hypot(64, 64))] * 2
    soft = np.zeros((64, 64), dtype=np.float32)
    soft[32, 8:56] = 0.6
    soft[10, 8:24] = 0.3  # a weaker false edge
    cache: dict[bytes, tuple[int, int, int, int]] = {}
    counts = evaluate_image(soft, truths, cache=cache)
    assert counts.shape == (99, 4)
    low, mid, high = counts[THRESHOLDS < 0.3][0], counts[np.isclose(THRESHOLDS, 0.5)][0], counts[-1]
    np.testing.assert_array_equal(low, [96, 96, 48, 64])  # cntR, sumR (two annotations), cntP, sumP
    np.testing.assert_array_equal(mid, [96, 96, 48, 48])
    np.testing.assert_array_equal(high, [0, 96, 0, 0])
    assert len(cache) == 3  # three distinct thinned maps over the 99 thresholds
    np.testing.assert_array_equal(evaluate_image(soft, truths, cache=cache), counts)


def test_solved_components_are_reused_without_changing_the_counts() -> None:
    # Two random soft maps that differ in one corner, scored at many thresholds: the memo of solved
    # components (GroundTruth._solved) must give exactly the counts of solving every component afresh.
    rng = np.random.default_rng(3)
    gt = np.zeros((96, 96), dtype=bool)
    gt[20, 5:90] = gt[5:90, 60] = gt[70, 10:50] = True
    soft = np.where(rng.random((96, 96)) < 0.3, rng.random((96, 96)), 0).astype(np.float32)
    soft[19:22, 5:90] = rng.random((3, 85))  # thick, overlapping candidates: large components
    other = soft.copy()
    other[:30, :30] = rng.random((30, 30)) * (other[:30, :30] > 0)
    thresholds = np.linspace(0.05, 0.95, 19)
    max_dist = 0.02 * np.hypot(96, 96)
    memo = [GroundTruth(gt, max_dist)]
    for soft_map in (soft, other):
        fresh = np.stack([evaluate_image(soft_map, [GroundTruth(gt, max_dist)], thresholds[k : k + 1])[0]
                          for k in range(thresholds.size)])
        np.testing.assert_array_equal(evaluate_image(soft_map, memo, thresholds), fresh)
    assert memo[0]._solved  # components were memoised (and reused: same counts on the second map)


def test_summarize_ods_ois_ap() -> None:
    thresholds = np.array([0.25, 0.5, 0.75])
    # counts: cntR, sumR, cntP, sumP per threshold; two images with different best thresholds.
    image_a = np.array([[90, 100, 45, 100], [80, 100, 60, 75], [40, 100, 38, 40]])
    image_b = np.array([[50, 50, 40, 80], [40, 50, 36, 40], [45, 50, 34, 35]])
    scores = summarize(np.stack([image_a, image_b]), thresholds)
    r = np.array([140, 120, 85]) / 150
    p = np.array([85, 96, 72]) / np.array([180, 115, 75])
    f = 2 * r * p / (r + p)
    assert scores.ods >= f.max() - 1e-12  # interpolation can only add candidates
    assert scores.ods == pytest.approx(f.max(), abs=5e-3)
    # OIS: image a peaks at t=0.5 (F .600/.800/.563), image b at t=0.75 (F .667/.847/.934).
    cnt = image_a[1] + image_b[2]
    r_ois, p_ois = cnt[0] / cnt[1], cnt[2] / cnt[3]
    assert scores.ois == pytest.approx(2 * r_ois * p_ois / (r_ois + p_ois))
    # AP: precision interpolated over recall in [0.5, 0.933], 0 elsewhere, averaged over 101 points.
    grid = np.linspace(0, 1, 101)
    inside = (grid >= r.min()) & (grid <= r.max())
    expected = np.interp(grid[inside], r[::-1], p[::-1]).sum() * 0.01
    assert scores.ap == pytest.approx(expected)


def test_exact_detector_scores() -> None:
    strong, weak = _line((50, 70), 20, 5, 65), _line((50, 70), 35, 5, 65)
    truths = [GroundTruth(strong | weak, 0.0075 * np.hypot(50, 70))]
    soft = (0.8 * strong + 0.4 * weak).astype(np.float32)
    scores = summarize(evaluate_image(soft, truths)[None])
    assert scores.ods == pytest.approx(1.0) and scores.ois == pytest.approx(1.0)
    assert scores.ods_threshold <= 0.4
    # The PR points are (R, P) = (1, 1), (0.5, 1) and, above 0.8, (0, 0) (no prediction counts as
    # precision 0, as in the benchmark): interpolated, P = 2R up to R = 0.5, then 1.
    grid = np.linspace(0, 1, 101)
    assert scores.ap == pytest.approx(np.minimum(2 * grid, 1.0).sum() * 0.01)
