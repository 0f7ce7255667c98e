"""Static int8 (QDQ) variants of the exported denoisers and of HED, made with ONNX Runtime's quantization tools.

    # 1. quantize (writes runs/int8/<name>.int8.onnx and runs/int8/variants.json)
    python -m export.quantize make --manifest models/onnx/manifest.json --data ../shared/data \\
        --out runs/int8 [--models dncnn-gray-s25 ...] [--calibration percentile] [--float first last residual]
    # 2. measure quality (float32 and int8 on the same noisy images) and speed, into variants.json
    python -m training.dncnn.evaluate --data ../shared/data/denoise --manifest models/onnx/manifest.json --int8 runs/int8
    python -m bench.precision_throughput --int8 runs/int8 --write
    # 3. copy the variants that pass both gates into models/onnx and the manifest
    python -m export.quantize ship --from runs/int8 --manifest models/onnx/manifest.json

    # HED: named explicitly, into a folder of its own (training.dncnn.evaluate --int8 takes every
    # variant of its folder for a denoiser); ODS of int8 and float32 from the same BSDS500 run
    python -m export.quantize make --manifest models/onnx/manifest.json --data ../shared/data \\
        --out runs/int8-hed --models hed-bsds500 --count 32
    python -m training.hed.evaluate --data ../shared/data/bsds500 --manifest models/onnx/manifest.json \\
        --modes ort --int8 runs/int8-hed --thresholds 33
    python -m bench.precision_throughput --int8 runs/int8-hed --write
    python -m export.quantize ship --from runs/int8-hed --manifest models/onnx/manifest.json

Why these choices:

* Static QDQ (``QuantizeLinear``/``DequantizeLinear`` around float ops) is what ONNX Runtime's CPU
  provider fuses into integer kernels (``QLinearConv`` on VNNI/AMX); weights are int8 per output
  channel (DnCNN's 64 filters differ in scale by orders of magnitude), activations uint8 per tensor
  (after ReLU they are non-negative, so asymmetric uint8 uses all 256 levels).
* Calibration runs on *training* images as each model sees them in service, never on the test sets
  the quality is measured on: for a denoiser with the noise it was trained for (Train400 gray,
  BSDS500 train colour; sigma for a sigma-specific model, uniform 0-55 for a blind one); for HED
  clean 256x256 crops of BSDS500 train (its own training images; it is served clean photographs).
* The first convolution (it sees the raw noisy pixels), the last (its output is the noise estimate,
  subtracted from the input at full precision) and the residual subtraction can stay float:
  ``--float`` names which; their cost is small next to the 15 inner 64x64 convolutions. These
  parts are DnCNN's: HED is quantized whole (``--float`` does not apply to it).
* Where post-training int8 loses too much (the colour DnCNNs), ``training.dncnn.qat`` fine-tunes
  the float weights against the int8 rounding and learns the activation scales; ``make
  --float-from DIR`` quantizes that file instead of the served one, with its learned scales
  (``SCALES_KEY`` metadata) in place of calibration, and records the fine-tune in the provenance.
  ``--float penultimate`` keeps the last hidden layer float (its output is the heavy-tailed one).
* Nothing reaches ``models/onnx`` without both measurements: ``ship`` refuses a variant whose
  quality or speed was not measured, and copies only those at least ``MIN_SPEEDUP`` times faster
  and losing at most ``MAX_LOSS_DB`` on every measured set and noise level (a denoiser) or at most
  ``MAX_LOSS_ODS`` of ODS at every measured threshold count on the whole test split (HED; the
  issue's criterion is ODS, so OIS and AP are recorded beside it but not gated).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
from PIL import Image

from export.onnx_export import FP16_SUFFIX, onnx_initializers
from restore.core.hashing import sha256_file
from restore.core.manifest import Entry, read_manifest, update_manifest

__all__ = [
    "PRECISION",
    "SCALES_KEY",
    "COMMAND_KEY",
    "learned_scales",
    "VARIANTS_NAME",
    "MIN_SPEEDUP",
    "MAX_LOSS_DB",
    "MAX_LOSS_ODS",
    "NoisyCrops",
    "calibration_crops",
    "edge_calibration_crops",
    "float_nodes",
    "float32_weights",
    "quantize_model",
    "variant_verdict",
    "record_metrics",
    "ship_variants",
    "main",
]

PRECISION = "int8"
VARIANTS_NAME = "variants.json"
#: The issue's gates for DnCNN: at least this much faster, at most this much PSNR lost (any cell).
MIN_SPEEDUP = 1.5
MAX_LOSS_DB = 0.05
#: HED's quality gate: at most this much ODS lost (the issue names ODS; OIS and AP are not gated).
MAX_LOSS_ODS = 0.005
#: Each quality delta a variant's metrics may carry: its limit, unit, printed digits, and the tool
#: that measures it. A denoiser's variant carries delta_db, HED's delta_ods.
QUALITY_GATES = {
    "delta_db": (MAX_LOSS_DB, "dB", 3, "training.dncnn.evaluate --int8"),
    "delta_ods": (MAX_LOSS_ODS, "ODS", 4, "training.hed.evaluate --int8"),
}
TASKS = ("denoise", "edges")
EDGE_CROP = 256  # HED's calibration crops (the pilot's): its 5th stage, at 1/16, still sees 16x16
BLIND_RANGE = (0.0, 55.0)  # the blind models' training noise levels (Zhang et al. 2017)
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
FLOAT_CHOICES = ("first", "last", "residual", "penultimate")
#: What ``make`` keeps float by default (``penultimate`` is asked for; it costs speed).
FLOAT_DEFAULT = ("first", "last", "residual")
#: ONNX metadata key under which ``training.dncnn.qat`` stores its learned activation scales.
SCALES_KEY = "int8_activation_scales"
#: ... and the command that fine-tuned the file (copied into the variant's provenance).
COMMAND_KEY = "qat_command"


class NoisyCrops(CalibrationDataReader):
    """ORT's calibration interface over a fixed list of CHW float32 crops, one batch of one each."""

    def __init__(self, crops: Sequence[np.ndarray], input_name: str = "input") -> None:
        self._crops = list(crops)
        self._input = input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._crops):
            return None
        crop = self._crops[self._next]
        self._next += 1
        return {self._input: crop[None].astype(np.float32, copy=False)}

    def rewind(self) -> None:
        self._next = 0


def _training_files(data: Path, channels: int) -> list[Path]:
    """Training images only: Train400 for gray, BSDS500 train for colour (CBSD68 comes from val)."""
    folder = data / "denoise" / "Train400" if channels == 1 else data / "bsds500" / "images" / "train"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".bmp"})
    if not files:
        raise FileNotFoundError(f"no training images in {folder}")
    return files


def calibration_crops(
    data: Path, channels: int, sigma: float | None, *, count: int = 64, size: int = 96, seed: int = 0
) -> list[np.ndarray]:
    """``count`` noisy CHW float32 crops of training images, as the model sees them in service.

    Noise is Gaussian in float, not clipped (the evaluation protocol): at ``sigma`` for a
    sigma-specific model, at levels spread evenly over 0-55 for a blind one, so the ranges cover
    every level it serves.
    """
    rng = np.random.default_rng(seed)
    files = _training_files(data, channels)
    picks = rng.choice(len(files), size=count, replace=count > len(files))
    levels = np.linspace(*BLIND_RANGE, count) if sigma is None else np.full(count, float(sigma))
    crops = []
    for index, level in zip(picks, rng.permutation(levels)):
        clean = _random_crop(files[index], channels, size, rng)
        crops.append((clean + rng.standard_normal(clean.shape) * (level / 255.0)).astype(np.float32))
    return crops


def edge_calibration_crops(data: Path, count: int = 64, size: int = EDGE_CROP, seed: int = 0) -> list[np.ndarray]:
    """``count`` clean RGB CHW float32 crops in [0, 1] of BSDS500 *train* images, as HED sees a
    photograph in service (no noise); the test split its ODS is measured on stays unseen."""
    rng = np.random.default_rng(seed)
    files = _training_files(data, 3)
    picks = rng.choice(len(files), size=count, replace=count > len(files))
    return [_random_crop(files[index], 3, size, rng) for index in picks]


def _random_crop(path: Path, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` CHW float32 crop in [0, 1] at a random place of one 8-bit image."""
    image = np.asarray(Image.open(path).convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    image = image[..., None] if image.ndim == 2 else image
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    return np.ascontiguousarray(image[top : top + size, left : left + size].transpose(2, 0, 1))


def float32_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its float16-stored weights (``export.onnx_export.store_initializers_fp16``)
    turned back into float32 initializers and the ``Cast`` nodes dropped.

    Needed because ORT's optimizer keeps those casts: behind one, a weight is not an initializer
    to the quantizer, which then quantizes it as an activation (per tensor, uint8) instead of per
    channel, and leaves the bias float (it warns "Expected bias ... to be an initializer").
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    folded = {name for name in (i.name for i in model.graph.initializer) if name.endswith(FP16_SUFFIX)}
    casts = [n for n in out.graph.node if n.op_type == "Cast" and len(n.input) == 1 and n.input[0] in folded]
    for node in casts:
        out.graph.node.remove(node)
    arrays = onnx_initializers(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(onnx.numpy_helper.from_array(values, name=name) for name, values in arrays.items())
    return out


def float_nodes(model: onnx.ModelProto, keep: Iterable[str]) -> list[str]:
    """Names of the nodes to leave in float: ``first``/``last`` Conv, ``residual`` (a Sub or Add
    fed by the graph input, i.e. ``input - noise``), ``penultimate`` (the last hidden Conv and the
    ReLU after it: with the last Conv float too, that layer's heavy-tailed output is never rounded)."""
    keep = set(keep)
    unknown = keep - set(FLOAT_CHOICES)
    if unknown:
        raise ValueError(f"unknown --float parts {sorted(unknown)}; choose from {FLOAT_CHOICES}")
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    inputs = {value.name for value in model.graph.input}
    names = []
    if "first" in keep and convs:
        names.append(convs[0])
    if "last" in keep and convs:
        names.append(convs[-1])
    if "penultimate" in keep and len(convs) > 2:
        names.append(convs[-2])
        names += [n.name for n in model.graph.node if n.op_type == "Relu" and _feeds(model, convs[-2], n)]
    if "residual" in keep:
        names += [n.name for n in model.graph.node if n.op_type in ("Sub", "Add") and inputs & set(n.input)]
    return names


def _feeds(model: onnx.ModelProto, producer: str, node: onnx.NodeProto) -> bool:
    outputs = {o for n in model.graph.node if n.name == producer for o in n.output}
    return bool(outputs & set(node.input))


def learned_scales(source: onnx.ModelProto, graph: onnx.ModelProto, excluded: Iterable[str]) -> dict[str, Any]:
    """ORT tensor overrides for the activation scales a quantization-aware fine-tune learned
    (``source``'s ``SCALES_KEY`` metadata, one per ReLU output in graph order, zero point 0), named
    as in ``graph`` (the prepared model ORT quantizes), for the ReLUs that are quantized; empty for a
    file without them, which is then calibrated (MinMax/percentile)."""
    props = {p.key: p.value for p in source.metadata_props}
    if SCALES_KEY not in props:
        return {}
    scales = json.loads(props[SCALES_KEY])
    relus = [n for n in graph.graph.node if n.op_type == "Relu"]
    if len(relus) != len(scales):
        raise ValueError(f"{len(scales)} learned scales for {len(relus)} ReLU outputs")
    skip = set(excluded)
    return {
        relu.output[0]: [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(0, dtype=np.uint8)}]
        for relu, scale in zip(relus, scales) if relu.name not in skip
    }


def quantize_model(
    source: Path, target: Path, crops: Sequence[np.ndarray], *, keep_float: Iterable[str] = FLOAT_DEFAULT,
    calibration: str = "minmax", percentile: float = 99.999,
) -> list[str]:
    """Write the int8 QDQ model of ``source`` to ``target``; returns the nodes left in float.

    The float16-stored weights are first made float32 initializers (``float32_weights``), then
    ``quant_pre_process`` (ORT's own step) optimizes the graph and infers shapes. A file written by
    ``training.dncnn.qat`` brings its learned activation scales (``learned_scales``), which replace
    the calibrated ones for the tensors they name.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        unfolded, prepared = Path(scratch) / "float32.onnx", Path(scratch) / "prepared.onnx"
        original = onnx.load(str(source))
        onnx.save(float32_weights(original), str(unfolded))
        quant_pre_process(str(unfolded), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        excluded = float_nodes(graph, keep_float)
        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        overrides = learned_scales(original, graph, excluded)
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        if calibration == "percentile":
            extra["CalibPercentile"] = percentile
        quantize_static(
            str(prepared), str(target), NoisyCrops(crops), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, calibrate_method=CALIBRATION_METHODS[calibration], extra_options=extra,
        )
    return excluded


def _leaves(tree: Any) -> list[float]:
    """Every number of a nested dict: delta_db is {set: {sigma: delta}}, delta_ods {thresholds: delta}."""
    return [v for child in tree.values() for v in _leaves(child)] if isinstance(tree, dict) else [float(tree)]


def variant_verdict(variant: dict[str, Any]) -> tuple[bool, str]:
    """Whether a measured variant may ship, and why: both measurements present, fast enough, close
    enough. Quality is judged by whichever delta the variant carries (``QUALITY_GATES``: dB for a
    denoiser, ODS for HED), on its worst cell; a HED measurement on part of the split (``limit``)
    does not count."""
    metrics = variant.get("metrics", {})
    gates = [(key, *QUALITY_GATES[key]) for key in QUALITY_GATES if _leaves(metrics.get(key, {}))]
    speedup = metrics.get("speed", {}).get("speedup")
    if not gates:
        tools = " or ".join(tool for *_, tool in QUALITY_GATES.values())
        return False, f"quality not measured ({tools})"
    if metrics.get("limit"):
        return False, (f"quality measured on {metrics.get('images')} images only (--limit {metrics['limit']}): "
                       "measure the whole split")
    if speedup is None:
        return False, "speed not measured (bench.precision_throughput --write)"
    for key, limit, unit, digits, _ in gates:
        worst = min(_leaves(metrics[key]))
        if worst < -limit:
            return False, f"loses {-worst:.{digits}f} {unit} (at most {limit} allowed)"
    if speedup < MIN_SPEEDUP:
        return False, f"{speedup:.2f}x faster (at least {MIN_SPEEDUP}x required)"
    worst_cells = ", ".join(f"{min(_leaves(metrics[key])):+.{digits}f} {unit}" for key, _, unit, digits, _ in gates)
    return True, f"{speedup:.2f}x faster, worst cell {worst_cells}"


def read_variants(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / VARIANTS_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def write_variants(folder: Path, variants: dict[str, dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / VARIANTS_NAME).write_text(json.dumps(dict(sorted(variants.items())), indent=2) + "\n")


def record_metrics(folder: Path, name: str, metrics: dict[str, Any]) -> None:
    """Merge ``metrics`` into variant ``name``'s as the file is *now*: the quality evaluation and the
    speed bench run at different times (one may take an hour) and must not write back a stale copy."""
    variants = read_variants(folder)
    variants[name]["metrics"] = {**variants[name].get("metrics", {}), **metrics}
    write_variants(folder, variants)


def ship_variants(source: Path, manifest: Path, names: Sequence[str] | None = None) -> dict[str, str]:
    """Copy every passing variant into the manifest's folder and record it under its model's
    ``variants[PRECISION]`` (file, sha256, provenance, metrics), in one locked manifest update;
    returns each variant's verdict. A variant whose float model changed since it was made is refused."""
    variants = read_variants(source)
    verdicts: dict[str, str] = {}
    passing: dict[str, dict[str, Any]] = {}
    for name, variant in variants.items():
        if names and name not in names:
            continue
        ok, why = variant_verdict(variant)
        verdicts[name] = ("ship: " if ok else "not shipped: ") + why
        if ok:
            passing[name] = variant
    root = manifest.parent

    def change(current: list[Entry]) -> list[Entry]:
        out = []
        for entry in current:
            variant = passing.get(entry["name"])
            if variant is not None:
                if variant["float_sha256"] != entry["sha256"]:
                    raise SystemExit(f"{entry['name']}: the float model changed since it was quantized; quantize again")
                shutil.copyfile(source / variant["file"], root / variant["file"])
                record = {k: variant[k] for k in ("file", "sha256", "provenance", "metrics")}
                entry = {**entry, "variants": {**entry.get("variants", {}), PRECISION: record}}
            out.append(entry)
        return out

    if passing:
        update_manifest(manifest, change)
    return verdicts


def _calibration(entry: Entry, args: argparse.Namespace) -> tuple[list[np.ndarray], list[str], str]:
    """What one model is calibrated on, which of its parts stay float, and the provenance text: a
    denoiser on noisy crops with ``--float``'s parts, HED on clean BSDS500 train crops, all int8
    (``--float`` names DnCNN's parts)."""
    if entry["task"] == "edges":
        crops = edge_calibration_crops(args.data, args.count)
        return crops, [], (f"{args.calibration} over {args.count} clean {EDGE_CROP}x{EDGE_CROP} crops of BSDS500 "
                           "train images (RGB in [0, 1], no noise; the test split is what ODS is measured on)")
    crops = calibration_crops(args.data, entry["channels"], entry["sigma"], count=args.count)
    return crops, list(args.float), (
        f"{args.calibration} over {args.count} noisy 96x96 training crops "
        f"({'Train400' if entry['channels'] == 1 else 'BSDS500 train'}, "
        f"{'sigma ' + str(entry['sigma']) if entry['sigma'] else 'sigma 0-55'})"
    )


def _selected(entries: Sequence[Entry], names: Sequence[str] | None) -> list[Entry]:
    """The named denoise or edges models; without names every denoiser (HED only when named: its
    variant is measured by another tool, best kept in a folder of its own)."""
    if not names:
        return [e for e in entries if e["task"] == "denoise"]
    unknown = set(names) - {e["name"] for e in entries if e["task"] in TASKS}
    if unknown:
        raise SystemExit(f"not {' or '.join(TASKS)} models of the manifest: {sorted(unknown)}")
    return [e for e in entries if e["name"] in names]


def _make(args: argparse.Namespace) -> int:
    command = "python -m export.quantize make " + shlex.join(
        ["--manifest", str(args.manifest), "--data", str(args.data), "--out", str(args.out),
         *(["--models", *args.models] if args.models else []),
         "--calibration", args.calibration, "--float", *args.float, "--count", str(args.count),
         *(["--float-from", str(args.float_from)] if args.float_from else [])]
    )
    entries = _selected(read_manifest(args.manifest), args.models)
    variants = read_variants(args.out)
    for entry in entries:
        source = args.manifest.parent / entry["file"]
        crops, keep_float, calibration = _calibration(entry, args)
        if args.float_from:  # quantization-aware fine-tuned weights of this model (training.dncnn.qat)
            source = args.float_from / f"{entry['name']}.onnx"
            props = {prop.key: prop.value for prop in onnx.load(str(source)).metadata_props}
            if SCALES_KEY in props:
                calibration = "activation scales learned by quantization-aware fine-tuning; weights per channel, MinMax"
            fine_tune = props.get(COMMAND_KEY, str(source))
        else:
            fine_tune = None
        target = args.out / f"{entry['name']}.{PRECISION}.onnx"
        excluded = quantize_model(source, target, crops, keep_float=keep_float, calibration=args.calibration)
        variants[entry["name"]] = {
            "file": target.name,
            "sha256": sha256_file(target),
            "float_sha256": entry["sha256"],
            "provenance": {
                "source": "quantized",
                "from": entry["file"],
                "tool": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8 activations)",
                "calibration": calibration,
                "float_nodes": excluded,
                "command": command,
                **({"fine_tuned_by": fine_tune} if fine_tune else {}),
            },
            "metrics": {},
        }
        write_variants(args.out, variants)
        print(f"{entry['name']}: {target} ({target.stat().st_size / 2**20:.2f} MiB), float: {excluded}", flush=True)
    return 0


def _ship(args: argparse.Namespace) -> int:
    for name, verdict in ship_variants(args.source, args.manifest, args.models).items():
        print(f"{name}: {verdict}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.quantize", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="quantize denoise models (and HED, when named) into --out")
    make.add_argument("--manifest", type=Path, required=True)
    make.add_argument("--data", type=Path, required=True, help="../shared/data (denoise/Train400, bsds500/images/train)")
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--models", nargs="*")
    make.add_argument("--calibration", choices=sorted(CALIBRATION_METHODS), default="minmax")
    make.add_argument("--float", nargs="*", default=list(FLOAT_DEFAULT), choices=FLOAT_CHOICES,
                      help="parts of a denoiser left in float (default: first last residual; HED is quantized whole)")
    make.add_argument("--float-from", type=Path,
                      help="quantize <dir>/<model>.onnx (written by training.dncnn.qat) instead of the served weights")
    make.add_argument("--count", type=int, default=64, help="calibration crops")
    ship = commands.add_parser("ship", help="copy measured variants that pass the gates into the manifest")
    ship.add_argument("--from", dest="source", type=Path, required=True)
    ship.add_argument("--manifest", type=Path, required=True)
    ship.add_argument("--models", nargs="*")
    args = parser.parse_args(argv)
    return _make(args) if args.command == "make" else _ship(args)


if __name__ == "__main__":
    raise SystemExit(main())
