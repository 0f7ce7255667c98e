"""Convert the DnCNN authors' released models to ONNX and record them in the manifest.

Usage::

    python -m export.dncnn --weights ../shared/weights/dncnn --out models/onnx

Each model: MatConvNet ``.mat`` -> ``DnCNN(batch_norm=False)`` state dict -> ONNX (float16-stored
weights, verified against PyTorch by ``export.onnx_export``) -> manifest entry. The sigma=25 gray
conversion is also checked against KAIR's independent conversion when ``kair/dncnn_25.pth`` is
present. Re-exporting keeps an entry's measured metrics when the file's hash did not change.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx
import torch
from torch import nn

from export.dncnn_matconvnet import kair_to_state_dict, load_matconvnet_layers, matconvnet_to_state_dict
from export.onnx_export import export_onnx, onnx_initializers, state_dict_from_onnx
from models.dncnn import DnCNN, build_dncnn, dncnn_config
from restore.core.hashing import sha256_file
from restore.core.manifest import MANIFEST_NAME, Entry, merge_keeping_metrics, update_manifest

__all__ = [
    "DnCNNRelease",
    "RELEASES",
    "convert_release",
    "check_against_kair",
    "dncnn_from_onnx",
    "main",
]

VERSION = "1.0.0"
UPSTREAM = "https://github.com/cszn/DnCNN"
LICENSE = (
    "no licence stated upstream (cszn/DnCNN has no LICENSE file); released by the authors "
    "for research use"
)
EXPORT_HW = 64  # traced size; export_onnx verifies at a different size


@dataclass(frozen=True)
class DnCNNRelease:
    """One released model: where its weights are and what it is."""

    name: str
    source: str  # path relative to the weights folder, as in the upstream ``model/`` folder
    config: str  # key of models.dncnn.DNCNN_CONFIGS
    sigma: float | None  # None: blind


RELEASES: tuple[DnCNNRelease, ...] = (
    DnCNNRelease("dncnn-gray-s15", "specifics/sigma=15.mat", "dncnn-s", 15),
    DnCNNRelease("dncnn-gray-s25", "specifics/sigma=25.mat", "dncnn-s", 25),
    DnCNNRelease("dncnn-gray-s50", "specifics/sigma=50.mat", "dncnn-s", 50),
    DnCNNRelease("dncnn-gray-blind", "GD_Gray_Blind.mat", "dncnn-b", None),
    DnCNNRelease("dncnn-color-blind", "GD_Color_Blind.mat", "cdncnn-b", None),
    DnCNNRelease("dncnn-color-s15", "specifics_color/color_sigma=15.mat", "cdncnn-s", 15),
    DnCNNRelease("dncnn-color-s25", "specifics_color/color_sigma=25.mat", "cdncnn-s", 25),
    DnCNNRelease("dncnn-color-s50", "specifics_color/color_sigma=50.mat", "cdncnn-s", 50),
)
KAIR_CHECK = ("dncnn-gray-s25", "kair/dncnn_25.pth")


def load_release(release: DnCNNRelease, weights: Path) -> DnCNN:
    """Build the PyTorch model of a release with the authors' weights (strict key match)."""
    model = build_dncnn(release.config, batch_norm=False)
    state = matconvnet_to_state_dict(load_matconvnet_layers(weights / release.source))
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_against_kair(model: DnCNN, kair_path: Path) -> tuple[float, float]:
    """Compare with KAIR's conversion: (max weight diff, max output diff on a test image).

    The output comparison runs KAIR's layout (a plain conv/relu ``nn.Sequential``) so it does not
    share the renaming used for the weight comparison.
    """
    kair = torch.load(kair_path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    renamed = kair_to_state_dict(kair)
    if renamed.keys() != ours.keys():
        raise ValueError("KAIR and converted state dicts have different layers")
    weight_diff = max(float((ours[k] - renamed[k]).abs().max()) for k in ours)

    layers: list[nn.Module] = []
    indices = sorted({int(k.split(".")[1]) for k in kair})
    for position, index in enumerate(indices):
        weight = kair[f"model.{index}.weight"]
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
        conv.load_state_dict({"weight": weight, "bias": kair[f"model.{index}.bias"]})
        layers.append(conv)
        if position < len(indices) - 1:
            layers.append(nn.ReLU())
    reference = nn.Sequential(*layers).eval()
    # A smooth gradient plus noise: a stand-in "image" at sigma 25.
    grid = torch.linspace(0, 1, 96)
    clean = (grid[None, :] * grid[:, None])[None, None]
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255
    with torch.inference_mode():
        output_diff = float((model(noisy) - (noisy - reference(noisy))).abs().max())
    return weight_diff, output_diff


def dncnn_from_onnx(model: onnx.ModelProto) -> DnCNN:
    """Rebuild the PyTorch ``DnCNN(batch_norm=False)`` of an exported DnCNN from its initializers.

    Channels and depth are read off the weights (``head.conv.weight`` is ``(F, C, 3, 3)``; one
    weight per conv), so a committed file can be checked against PyTorch without the ``.mat``.
    """
    arrays = onnx_initializers(model)
    features, channels = arrays["head.conv.weight"].shape[:2]
    depth = sum(1 for name in arrays if name.endswith("weight"))
    module = DnCNN(channels=channels, depth=depth, features=features, batch_norm=False)
    module.load_state_dict(state_dict_from_onnx(model, module.state_dict()), strict=True)
    return module.eval()


def convert_release(
    release: DnCNNRelease, weights: Path, out_dir: Path, *, fp16_storage: bool = True
) -> tuple[Path, DnCNN, float]:
    """Export one release to ``out_dir/<name>.onnx``; returns (path, model, parity diff)."""
    model = load_release(release, weights)
    path = out_dir / f"{release.name}.onnx"
    diff = export_onnx(
        model, path, (1, model.channels, EXPORT_HW, EXPORT_HW), fp16_storage=fp16_storage
    )
    return path, model, diff


def manifest_entry(release: DnCNNRelease, path: Path, command: str) -> Entry:
    """Manifest entry for an exported release (metrics are filled by training.dncnn.evaluate)."""
    cfg = dncnn_config(release.config)
    return {
        "name": release.name,
        "task": "denoise",
        "file": path.name,
        "sha256": sha256_file(path),
        "version": VERSION,
        "channels": cfg.channels,
        "sigma": release.sigma,
        "overlap": cfg.depth,  # receptive-field radius: one pixel per 3x3 conv
        "multiple": 1,
        "default": True,
        "provenance": {
            "source": "converted",
            "origin": f"{UPSTREAM} (model/{release.source})",
            "license": LICENSE,
            "converted_by": command,
        },
        "metrics": {},
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export.dncnn", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--weights", type=Path, required=True, help="folder of the authors' .mat files"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (holds manifest.json)"
    )
    parser.add_argument("--models", nargs="*", help="subset of release names (default: all)")
    parser.add_argument(
        "--fp32-dir",
        type=Path,
        help="also write float32-stored variants here (not in the manifest)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    # Only the options that shape the committed files: --models/--fp32-dir do not change them.
    command = "python -m export.dncnn " + shlex.join(
        ["--weights", str(args.weights), "--out", str(args.out)]
    )
    by_name = {r.name: r for r in RELEASES}
    unknown = set(args.models or ()) - by_name.keys()
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; known: {sorted(by_name)}")
    selected = [by_name[n] for n in args.models] if args.models else list(RELEASES)

    updates = []
    for release in selected:
        path, model, diff = convert_release(release, args.weights, args.out)
        updates.append(manifest_entry(release, path, command))
        size_mib = path.stat().st_size / 2**20
        print(f"{release.name}: {path} ({size_mib:.2f} MiB), ORT parity {diff:.2e}")
        if release.name == KAIR_CHECK[0] and (args.weights / KAIR_CHECK[1]).exists():
            weight_diff, output_diff = check_against_kair(model, args.weights / KAIR_CHECK[1])
            print(f"  KAIR check: max weight diff {weight_diff:.3g}, "
                  f"max output diff {output_diff:.3g}")
            if weight_diff != 0.0 or output_diff > 1e-5:
                raise SystemExit("conversion disagrees with KAIR's dncnn_25.pth")
        if args.fp32_dir is not None:
            fp32_path, _, fp32_diff = convert_release(
                release, args.weights, args.fp32_dir, fp16_storage=False
            )
            print(f"  fp32 variant: {fp32_path}, ORT parity {fp32_diff:.2e}")
    manifest_path = args.out / MANIFEST_NAME
    update_manifest(manifest_path, lambda current: merge_keeping_metrics(current, updates))
    print(f"manifest: {manifest_path} ({len(updates)} entries updated)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
