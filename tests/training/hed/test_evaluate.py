"""training/hed/evaluate.py: the CLI end to end on a generated miniature BSDS500 (an int8 variant's
delta_ods included); the benchmark itself is tests/training/hed/test_bsds.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from export.quantize import quantize_model, read_variants, variant_verdict, write_variants
from restore.core.hashing import sha256_file
from tests.tiny_hed import tiny_hed
from training.hed.evaluate import main


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
