"""export/quantize.py: int8 QDQ variants (what stays float, that they compute the float model's
answer within int8 error), the calibration crops, HED's variant, and the ship gates (dB, ODS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export.onnx_export import export_onnx, run_onnx
from export.quantize import (
    MAX_LOSS_DB,
    MAX_LOSS_ODS,
    MIN_SPEEDUP,
    calibration_crops,
    edge_calibration_crops,
    float_nodes,
    main,
    quantize_model,
    read_variants,
    record_metrics,
    ship_variants,
    variant_verdict,
    write_variants,
)
from models.dncnn import DnCNN
from restore.core.hashing import sha256_file
from restore.core.manifest import load_manifest, read_manifest, write_manifest
from tests.tiny_hed import tiny_hed


def _tiny(tmp_path: Path, channels: int = 1) -> Path:
    torch.manual_seed(0)
    model = DnCNN(channels=channels, depth=5, features=16, batch_norm=False).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path, (1, channels, 16, 16))  # float16-stored weights, as the shipped files
    return path


def _smooth_noisy(count: int, channels: int, size: int = 32, sigma: float = 25.0) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    ramp = np.linspace(0.1, 0.9, size, dtype=np.float32)
    return [
        (np.broadcast_to(ramp[None, :, None] * ramp[None, None, ::-1 if i % 2 else 1], (channels, size, size))
         + rng.standard_normal((channels, size, size)) * sigma / 255).astype(np.float32)
        for i in range(count)
    ]


def _quantized_inputs(model: onnx.ModelProto) -> dict[str, bool]:
    """For every Conv and Sub: whether it runs int8, i.e. its weight (Conv) or every input (Sub)
    comes out of a DequantizeLinear. A float Conv may still read a dequantized activation: the
    output of a quantized neighbour is stored in uint8 either way."""
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    return {
        n.name: all(producer.get(i) == "DequantizeLinear" for i in (n.input[1:2] if n.op_type == "Conv" else n.input))
        for n in model.graph.node if n.op_type in ("Conv", "Sub")
    }


def _per_channel_weight_scales(model: onnx.ModelProto) -> list[int]:
    """Number of scales of every int8 weight: one per output channel when quantized per channel."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        int(np.prod(inits[n.input[1]].dims)) for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        and len(inits[n.input[0]].dims) == 4
    ]


@pytest.mark.parametrize("keep", [("first", "last", "residual"), ()])
def test_quantized_model_keeps_the_named_parts_float_and_matches_the_float_model(tmp_path: Path, keep: tuple[str, ...]) -> None:
    source = _tiny(tmp_path)
    target = tmp_path / "tiny.int8.onnx"
    excluded = quantize_model(source, target, _smooth_noisy(8, 1), keep_float=keep)
    model = onnx.load(str(target))
    runs_int8 = _quantized_inputs(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 5 and set(excluded) == {name for name, q in runs_int8.items() if not q}
    assert runs_int8[convs[0]] is ("first" not in keep) and runs_int8[convs[-1]] is ("last" not in keep)
    assert all(runs_int8[name] for name in convs[1:-1])  # the inner convolutions are always int8
    assert runs_int8["/Sub"] is ("residual" not in keep)
    scales = _per_channel_weight_scales(model)
    assert len(scales) == sum(runs_int8[c] for c in convs) and all(n in (16, 1) for n in scales)
    assert scales.count(16) == sum(runs_int8[c] for c in convs[:-1])  # 16 filters: per channel; the tail has 1
    assert not any(n.op_type == "Cast" for n in model.graph.node)  # float16 storage folded, weights constant
    x = _smooth_noisy(1, 1, size=48)[0][None]
    reference, quantized = run_onnx(source, x), run_onnx(target, x)
    error = np.abs(quantized - reference).max()
    if "residual" in keep:  # the noise the model removes (x - output): int8 error is small next to it
        assert 0 < error < 0.1 * np.abs(x - reference).max()
    else:  # the output itself is stored in uint8 over its range: within about one step of it
        assert 0 < error < 2 * (reference.max() - reference.min()) / 255


def test_float_nodes_refuses_unknown_parts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="middle"):
        float_nodes(onnx.load(str(_tiny(tmp_path))), ["middle"])


def _training_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "denoise" / "Train400"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 40), 60 * (i + 1), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "data"


def test_calibration_crops_carry_the_models_noise(tmp_path: Path) -> None:
    """Flat training images, so what varies within a crop is the noise: sigma 25 for a sigma-25
    model; levels spread over 0-55 for a blind one (quiet and loud crops both present)."""
    data = _training_folder(tmp_path)
    fixed = calibration_crops(data, 1, 25, count=12, size=24)
    assert all(c.shape == (1, 24, 24) and c.dtype == np.float32 for c in fixed)
    assert np.allclose([c.std() * 255 for c in fixed], 25, rtol=0.15)
    blind = sorted(c.std() * 255 for c in calibration_crops(data, 1, None, count=12, size=24))
    assert blind[0] < 5 and blind[-1] > 45


def _bsds_train(tmp_path: Path) -> Path:
    """A BSDS500 layout whose train images are flat colours and whose one test image is white:
    HED's calibration must read only the former."""
    for split, colours in (("train", [(200, 40, 40), (40, 200, 40), (40, 40, 200)]), ("test", [(255, 255, 255)])):
        folder = tmp_path / "data" / "bsds500" / "images" / split
        folder.mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.fromarray(np.full((270, 300, 3), colour, dtype=np.uint8)).save(folder / f"{i}.jpg", quality=95)
    return tmp_path / "data"


def test_edge_calibration_crops_are_clean_rgb_train_crops(tmp_path: Path) -> None:
    crops = edge_calibration_crops(_bsds_train(tmp_path), count=6, size=256)
    assert len(crops) == 6 and all(c.shape == (3, 256, 256) and c.dtype == np.float32 for c in crops)
    assert all(c.std(axis=(1, 2)).max() < 2 / 255 for c in crops)  # no noise added (JPEG of a flat colour)
    assert all(0.1 < c.max() < 0.85 for c in crops)  # train colours only, never the white test image


def test_make_quantizes_hed_whole_on_clean_train_crops(tmp_path: Path) -> None:
    """An edges entry, named: every Conv int8 (DnCNN's --float parts do not apply), the calibration
    recorded, and the fused map within a few uint8 steps of the float model's. Unnamed, HED is left alone."""
    data, models, out = _bsds_train(tmp_path), tmp_path / "models", tmp_path / "int8"
    tiny_hed(models)
    args = ["make", "--manifest", str(models / "manifest.json"), "--data", str(data), "--out", str(out), "--count", "3"]
    assert main(args) == 0 and read_variants(out) == {}  # the default: denoisers only
    assert main([*args, "--models", "hed-bsds500"]) == 0
    variant = read_variants(out)["hed-bsds500"]
    assert variant["float_sha256"] == sha256_file(models / "hed.onnx") and variant["provenance"]["float_nodes"] == []
    assert "3 clean 256x256 crops of BSDS500 train" in variant["provenance"]["calibration"]
    assert "--models hed-bsds500" in variant["provenance"]["command"]
    model = onnx.load(str(out / variant["file"]))
    assert sha256_file(out / variant["file"]) == variant["sha256"]
    convs = {name: q for name, q in _quantized_inputs(model).items() if name.endswith("Conv")}
    assert len(convs) == 19 and all(convs.values())  # hed-tiny: 13 in its stages, 5 side outputs, the fusion
    x = edge_calibration_crops(data, count=1, size=64, seed=5)[0][None]
    reference, quantized = run_onnx(models / "hed.onnx", x)[0, 0], run_onnx(out / variant["file"], x)[0, 0]
    assert 0 < np.abs(quantized - reference).mean() < 4 / 255
    with pytest.raises(SystemExit, match="not denoise or edges models"):
        main([*args, "--models", "weather"])


def _variant(delta: float | None, speedup: float | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if delta is not None:
        metrics["delta_db"] = {"BSD68": {"15": 0.0, "25": delta}}
    if speedup is not None:
        metrics["speed"] = {"speedup": speedup}
    return {"metrics": metrics}


@pytest.mark.parametrize(
    "delta,speedup,ok,says",
    [
        (None, 3.0, False, "quality not measured"),
        (-0.01, None, False, "speed not measured"),
        (-MAX_LOSS_DB - 0.01, 3.0, False, "loses 0.060 dB"),
        (-0.01, MIN_SPEEDUP - 0.1, False, "1.40x faster"),
        (-MAX_LOSS_DB, MIN_SPEEDUP, True, "1.50x faster"),
    ],
)
def test_variant_verdict_needs_both_measurements_and_both_gates(
    delta: float | None, speedup: float | None, ok: bool, says: str
) -> None:
    verdict = variant_verdict(_variant(delta, speedup))
    assert verdict[0] is ok and says in verdict[1]


def _hed_variant(deltas: dict[str, float] | None, speedup: float | None, limit: int | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"images": 200, "limit": limit}
    if deltas is not None:
        metrics.update(delta_ods=deltas, delta_ois={n: -0.02 for n in deltas}, delta_ap={n: -0.03 for n in deltas})
    if speedup is not None:
        metrics["speed"] = {"speedup": speedup}
    return {"metrics": metrics}


@pytest.mark.parametrize(
    "deltas,speedup,limit,ok,says",
    [
        ({"33": -0.004}, 3.0, None, True, "3.00x faster, worst cell -0.0040 ODS"),
        ({"33": -MAX_LOSS_ODS}, MIN_SPEEDUP, None, True, "1.50x faster"),
        ({"99": 0.001, "33": -0.006}, 3.0, None, False, "loses 0.0060 ODS (at most 0.005 allowed)"),
        ({"33": -0.004}, None, None, False, "speed not measured"),
        ({"33": -0.004}, 1.2, None, False, "1.20x faster (at least 1.5x required)"),
        ({"33": -0.004}, 3.0, 2, False, "200 images only (--limit 2)"),
        (None, 3.0, None, False, "quality not measured"),
    ],
)
def test_variant_verdict_judges_hed_by_ods_alone(
    deltas: dict[str, float] | None, speedup: float | None, limit: int | None, ok: bool, says: str
) -> None:
    """ODS is the issue's gate: OIS and AP losses (here 0.02 and 0.03) are recorded, not judged; a
    measurement on part of the split (--limit) is not one."""
    verdict = variant_verdict(_hed_variant(deltas, speedup, limit))
    assert verdict[0] is ok and says in verdict[1]


def test_ship_copies_passing_variants_into_the_manifest_the_service_reads(tmp_path: Path) -> None:
    models, runs = tmp_path / "models", tmp_path / "runs"
    models.mkdir()
    runs.mkdir()
    entries = []
    for name in ("good", "lossy"):
        path = models / f"{name}.onnx"
        path.write_bytes(f"float {name}".encode())
        entries.append({
            "name": name, "task": "denoise", "file": path.name, "sha256": sha256_file(path), "version": "1",
            "channels": 1, "sigma": None, "overlap": 4, "multiple": 1, "default": True, "provenance": {}, "metrics": {},
        })
        (runs / f"{name}.int8.onnx").write_bytes(f"int8 {name}".encode())
    write_manifest(models / "manifest.json", entries)
    write_variants(runs, {
        name: {"file": f"{name}.int8.onnx", "sha256": sha256_file(runs / f"{name}.int8.onnx"),
               "float_sha256": sha256_file(models / f"{name}.onnx"), "provenance": {"source": "quantized"},
               **_variant(delta, 2.5)}
        for name, delta in (("good", -0.02), ("lossy", -1.9))
    })
    verdicts = ship_variants(runs, models / "manifest.json")
    assert verdicts["good"].startswith("ship") and verdicts["lossy"].startswith("not shipped: loses 1.900 dB")
    assert (models / "good.int8.onnx").read_bytes() == b"int8 good" and not (models / "lossy.int8.onnx").exists()
    by_name = {spec.name: spec for spec in load_manifest(models)}
    variant = by_name["good"].variants["int8"]
    assert variant.file == models / "good.int8.onnx" and variant.sha256 == sha256_file(variant.file)
    assert variant.metrics["speed"]["speedup"] == 2.5 and not by_name["lossy"].variants
    assert json.loads((models / "manifest.json").read_text())  # still valid for restore.core.manifest readers
    assert read_manifest(models / "manifest.json")


def test_ship_refuses_a_variant_of_a_float_model_that_changed_since(tmp_path: Path) -> None:
    models, runs = tmp_path / "models", tmp_path / "runs"
    models.mkdir()
    runs.mkdir()
    (models / "m.onnx").write_bytes(b"re-exported")
    write_manifest(models / "manifest.json", [{
        "name": "m", "task": "denoise", "file": "m.onnx", "sha256": sha256_file(models / "m.onnx"), "version": "1",
        "channels": 1, "sigma": None, "overlap": 4, "multiple": 1, "default": True, "provenance": {}, "metrics": {},
    }])
    (runs / "m.int8.onnx").write_bytes(b"int8")
    write_variants(runs, {"m": {"file": "m.int8.onnx", "sha256": "x", "float_sha256": "old", "provenance": {}, **_variant(0.0, 2.0)}})
    with pytest.raises(SystemExit, match="changed since it was quantized"):
        ship_variants(runs, models / "manifest.json")
    assert "variants" not in read_manifest(models / "manifest.json")[0]
    assert read_variants(runs)["m"]["float_sha256"] == "old"


def test_record_metrics_merges_into_the_file_as_it_is_now(tmp_path: Path) -> None:
    """The hour-long quality run and the speed bench each add their figures; neither erases the other's."""
    write_variants(tmp_path, {"m": {"file": "m.int8.onnx", "metrics": {}}})
    record_metrics(tmp_path, "m", {"speed": {"speedup": 3.0}})  # written while the evaluation runs
    record_metrics(tmp_path, "m", {"delta_db": {"BSD68": {"25": -0.02}}})
    assert read_variants(tmp_path)["m"]["metrics"] == {"speed": {"speedup": 3.0}, "delta_db": {"BSD68": {"25": -0.02}}}
