"""training/hed/evaluate.py: correspondence matching on cases of known F, the ODS/OIS/AP arithmetic,
Canny's soft map, and the CLI end to end on a generated miniature BSDS500 (an int8 variant's
delta_ods included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from PIL import Image
from skimage.feature import canny

from export.onnx_export import sha256_file
from export.quantize import quantize_model, read_variants, variant_verdict, write_variants
from tests.conftest import tiny_hed
from training.hed.evaluate import (
    THRESHOLDS,
    GroundTruth,
    canny_scale,
    canny_soft,
    evaluate_image,
    main,
    match_boundaries,
    summarize,
)


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


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_canny_soft_thresholds_are_canny(sigma: float) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:80]
    gray = ((x > 30) * 0.5 + (np.hypot(y - 32, x - 55) < 12) * 0.3 + rng.normal(0, 0.03, (64, 80)))
    rgb = (np.clip(np.repeat(gray[:, :, None], 3, axis=2), 0, 1) * 255).astype(np.uint8)
    soft = canny_soft(rgb, sigma)
    scale = canny_scale(sigma)
    from skimage.color import rgb2gray

    for t in (0.1, 0.3, 0.6):
        expected = canny(rgb2gray(rgb), sigma, t / scale, t / scale)
        np.testing.assert_array_equal(soft >= t, expected)
    assert soft.max() == pytest.approx(0.5, abs=0.05)  # the 0.5 step at x = 30, unit-step scaling


def _mini_bsds(root: Path) -> None:
    """Two 120 x 160 'photographs' with two annotations each, in the BSDS500 folder layout.

    (maxDist is 0.0075 x 200 = 1.5 px here; much smaller images would allow exact hits only.)
    """
    for split_dir in ("images/test", "groundTruth/test"):
        (root / split_dir).mkdir(parents=True)
    for index, image_id in enumerate(("1001", "1002")):
        y, x = np.mgrid[0:120, 0:160]
        inside = np.hypot(y - 60, x - 75 - 4 * index) < 35
        rgb = np.where(inside[:, :, None], [200, 60, 40], [30, 90, 160]).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images/test" / f"{image_id}.jpg", quality=95)
        boundary = inside & ~np.roll(inside, 1, 0) | inside & ~np.roll(inside, 1, 1)
        cells = np.empty((1, 2), dtype=object)
        for k in range(2):
            cells[0, k] = {"Segmentation": inside.astype(np.uint16) + 1,
                           "Boundaries": np.roll(boundary, k, 1).astype(np.uint8)}
        scipy.io.savemat(str(root / "groundTruth/test" / f"{image_id}.mat"), {"groundTruth": cells})


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_cli_on_a_miniature_bsds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _mini_bsds(tmp_path / "bsds")
    onnx_dir = tmp_path / "onnx"
    tiny_hed(onnx_dir, {"kept": 1})
    code = main([
        "--data", str(tmp_path / "bsds"), "--manifest", str(onnx_dir / "manifest.json"),
        "--modes", "ort", "ort-tiled", "canny", "--canny-sigmas", "1.5", "--workers", "1",
        "--write-manifest",
    ])
    assert code == 0
    table = capsys.readouterr().out
    for method in ("HED ORT, whole image", "HED ORT, tiled 1024", "HED ORT, tiled 320", "Canny sigma=1.5"):
        assert f"| {method} |" in table
    metrics = json.loads((onnx_dir / "manifest.json").read_text())["models"][0]["metrics"]
    assert metrics["kept"] == 1
    assert set(metrics["bsds500_test"]) == {"ods", "ois", "ap", "ods_threshold", "thresholds"}
    assert metrics["by_method"]["Canny sigma=1.5"]["ods"] > 0.5  # clean synthetic edges


def test_cli_multiscale_modes_and_two_threshold_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ort-ms`` / ``ort-tiled-ms`` score the multi-scale map (whole image and through the service's
    tiling: on a clean synthetic image the two agree), ``--thresholds 9 5`` prints one table per
    count from one pass, and the manifest gets the headline count with the other beside it."""
    _mini_bsds(tmp_path / "bsds")
    onnx_dir = tmp_path / "onnx"
    tiny_hed(onnx_dir)
    args = ["--data", str(tmp_path / "bsds"), "--manifest", str(onnx_dir / "manifest.json"), "--workers", "1"]
    assert main([*args, "--modes", "ort-tiled", "ort-ms", "ort-tiled-ms", "--small-tile", "0", "--scales", "1.5", "0.5", "1",
                 "--thresholds", "9", "5", "--write-manifest"]) == 0
    out = capsys.readouterr().out
    assert "2 images of test, 9 thresholds:" in out and "2 images of test, 5 thresholds:" in out
    assert "wall time" in out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| HED")}
    assert set(rows) == {"HED ORT, tiled 1024", "HED ORT, whole image, scales 0.5,1,1.5", "HED ORT, tiled 1024, scales 0.5,1,1.5"}
    metrics = json.loads((onnx_dir / "manifest.json").read_text())["models"][0]["metrics"]
    assert metrics["bsds500_test"]["thresholds"] == 9 and set(metrics["bsds500_test"]["at_thresholds"]) == {"5"}
    multi = metrics["bsds500_test_multiscale"]
    assert multi["scales"] == [0.5, 1.0, 1.5] and multi["thresholds"] == 9
    whole = metrics["by_method"]["HED ORT, whole image, scales 0.5,1,1.5"]
    assert abs(whole["ods"] - multi["ods"]) < 0.02  # tiled (padded to 16) vs whole: the same map up to the padding
    # A later run at another count only: the earlier counts of the same file stay beside it.
    assert main([*args, "--modes", "ort-tiled", "--small-tile", "0", "--thresholds", "7", "--write-manifest"]) == 0
    later = json.loads((onnx_dir / "manifest.json").read_text())["models"][0]["metrics"]
    assert later["bsds500_test"]["thresholds"] == 7
    assert later["bsds500_test"]["at_thresholds"] == {
        "9": {k: v for k, v in metrics["bsds500_test"].items() if k not in ("thresholds", "at_thresholds")},
        "5": metrics["bsds500_test"]["at_thresholds"]["5"],
    }
    assert later["bsds500_test_multiscale"] == multi  # not measured again: unchanged
    with pytest.raises(SystemExit):
        main([*args, "--modes", "ort-ms", "--scales", "3"])  # the service's rules: at most 2


def _int8_variant(tmp_path: Path) -> tuple[list[str], Path]:
    """The miniature BSDS, a tiny HED in its manifest and its int8 variant in ``int8/variants.json``;
    the CLI's common arguments and that folder."""
    _mini_bsds(tmp_path / "bsds")
    manifest = tiny_hed(tmp_path / "onnx")
    out = tmp_path / "int8"
    rng = np.random.default_rng(0)
    quantize_model(manifest.parent / "hed.onnx", out / "hed-bsds500.int8.onnx",
                   [rng.random((3, 64, 64), dtype=np.float32) for _ in range(3)], keep_float=())
    write_variants(out, {"hed-bsds500": {
        "file": "hed-bsds500.int8.onnx", "sha256": sha256_file(out / "hed-bsds500.int8.onnx"),
        "float_sha256": sha256_file(manifest.parent / "hed.onnx"), "provenance": {}, "metrics": {},
    }})
    return ["--data", str(tmp_path / "bsds"), "--manifest", str(manifest), "--workers", "1", "--int8", str(out)], out


def test_cli_int8_records_the_variants_delta_against_ort_of_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--int8`` adds modes ort and ort-int8 (here to canny) and records, per threshold count, both
    scores and int8 - float32 in variants.json, where ship's ODS gate reads them."""
    args, out = _int8_variant(tmp_path)
    assert main([*args, "--modes", "canny", "--canny-sigmas", "1.5", "--thresholds", "9", "5"]) == 0
    table = capsys.readouterr().out
    for method in ("HED ORT, whole image", "HED ORT int8, whole image", "Canny sigma=1.5"):
        assert f"| {method} |" in table
    metrics = read_variants(out)["hed-bsds500"]["metrics"]
    assert metrics["images"] == 2 and metrics["limit"] is None
    for count in ("9", "5"):
        int8, float32 = metrics["bsds500_test"][count], metrics["float32_bsds500_test"][count]
        assert f"| HED ORT int8, whole image | {int8['ods']:.4f} |" in table
        assert f"| HED ORT, whole image | {float32['ods']:.4f} |" in table
        for field in ("ods", "ois", "ap"):
            assert metrics[f"delta_{field}"][count] == pytest.approx(int8[field] - float32[field], abs=1.5e-4)
    assert variant_verdict({"metrics": metrics})[1].startswith("speed not measured")  # quality is in


@pytest.mark.parametrize(
    "variants,says",
    [
        ({}, "no int8 variant of hed-bsds500"),
        ({"float_sha256": "0" * 64}, "made from another float file"),
        ({"sha256": "0" * 64}, "changed since it was made"),
    ],
)
def test_cli_int8_refuses_a_variant_it_cannot_compare(tmp_path: Path, variants: dict[str, str], says: str) -> None:
    """Missing, made from another float file than the manifest's, or altered since: refused before
    any image is read (a delta against another model would mean nothing)."""
    manifest = tiny_hed(tmp_path / "onnx")
    out = tmp_path / "int8"
    out.mkdir()
    (out / "hed-bsds500.int8.onnx").write_bytes(b"int8")
    variant = {"file": "hed-bsds500.int8.onnx", "sha256": sha256_file(out / "hed-bsds500.int8.onnx"),
               "float_sha256": sha256_file(manifest.parent / "hed.onnx"), "provenance": {}, "metrics": {}}
    write_variants(out, {"hed-bsds500": {**variant, **variants}} if variants else {})
    with pytest.raises(SystemExit, match=says):
        main(["--data", str(tmp_path / "absent"), "--manifest", str(manifest), "--modes", "ort", "--int8", str(out)])


def test_cli_int8_mode_needs_its_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--manifest", str(tmp_path / "manifest.json"), "--modes", "ort-int8"])
