"""Export a DnCNN trained by ``training.dncnn.train`` like the authors' weights: ONNX, manifest.

Usage::

    python -m export.dncnn_trained --checkpoint runs/dncnn-s25/best.pt \\
        --name dncnn-gray-s25-ours --out models/onnx [--default] [--blend ALPHA]

BatchNorm is folded into the preceding convolution (``fold_batch_norm``), which turns the trained
network into the same ``DnCNN(batch_norm=False)`` architecture as the converted releases; the
export itself (float16-stored weights, ORT-vs-PyTorch check) is ``export.dncnn``'s. The entry is
written through ``restore.core.manifest.update_manifest`` with ``default: false`` unless ``--default``
(ship it only when it beats the authors' weights on ``training.dncnn.evaluate``) and provenance: our
training command, data, machine and duration, read from the checkpoint. Metrics are filled by
``python -m training.dncnn.evaluate ... --models NAME --write-manifest``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
import torch

from export.dncnn import EXPORT_HW, dncnn_from_onnx
from export.onnx_export import export_onnx
from models.dncnn import DnCNN, dncnn_config
from restore.core.hashing import sha256_file
from restore.core.manifest import MANIFEST_NAME, Entry, merge_keeping_metrics, update_manifest

__all__ = ["fold_batch_norm", "model_from_checkpoint", "blend_with_init", "trained_entry", "main"]

VERSION = "1.0.0"
ORIGIN = "trained in this repository with training/dncnn/train.py (Zhang et al. 2017 recipe)"
FINE_TUNED_LICENSE = (
    "fine-tuned from the DnCNN authors' released weights (https://github.com/cszn/DnCNN, no licence "
    "stated upstream, research use): the same terms apply"
)
TRAIN_SETS = {
    "Train400": "Train400 (400 gray 180x180 images, from the DnCNN authors' repository)",
    "BSD432": "BSD432 (BSDS500 train+val+test minus the 68 CBSD68 images)",
}


@torch.no_grad()
def fold_batch_norm(model: DnCNN) -> DnCNN:
    """The same function as ``model.eval()`` as a ``DnCNN(batch_norm=False)``.

    Each middle Conv -> BatchNorm becomes one Conv: with ``s = gamma / sqrt(var + eps)`` per output
    channel, ``w' = w * s`` and ``b' = beta + (b - mean) * s`` (``b = 0`` for the bias-free
    training conv), computed in float64.
    """
    features = model.head.conv.out_channels
    folded = DnCNN(model.channels, model.depth, features, batch_norm=False)
    folded.head.load_state_dict(model.head.state_dict())
    folded.tail.load_state_dict(model.tail.state_dict())
    for source, target in zip(model.body, folded.body):
        conv, bn = source.conv, getattr(source, "bn", None)
        weight = conv.weight.double()
        bias = (
            conv.bias.double() if conv.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64)
        )
        if bn is not None:
            scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            weight = weight * scale[:, None, None, None]
            bias = bn.bias.double() + (bias - bn.running_mean.double()) * scale
        target.conv.weight.copy_(weight.float())
        target.conv.bias.copy_(bias.float())
    return folded.eval()


def model_from_checkpoint(state: dict[str, Any]) -> DnCNN:
    """The trained (BatchNorm) model of a checkpoint: the architecture its training config names
    (``arch`` with the ``depth`` / ``features`` overrides), with its weights."""
    config: Mapping[str, Any] = state["config"]
    network = dncnn_config(config["arch"], depth=config["depth"], features=config["features"])
    network = dataclasses.replace(network, batch_norm=config.get("batch_norm", True))
    model = DnCNN(**dataclasses.asdict(network))
    model.load_state_dict(state["model"], strict=True)
    return model.eval()


@torch.no_grad()
def blend_with_init(model: DnCNN, init: DnCNN, alpha: float) -> DnCNN:
    """``alpha`` x the fine-tuned weights + (1 - ``alpha``) x the weights the run started from.

    Weight-space ensembling of a fine-tuned network with its starting point (WiSE-FT: Wortsman et
    al., "Robust fine-tuning of zero-shot models", CVPR 2022): fine-tuning from a model with a low
    learning rate stays in one basin, so the straight line between the two is a family of working
    networks that trades the new skill (camera noise) against the old one (Gaussian noise) with one
    number, chosen on validation data, without retraining. Both must be BatchNorm-free, same shape.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend alpha must be in [0, 1], not {alpha}")
    start = init.state_dict()
    blended = {k: alpha * v.double() + (1.0 - alpha) * start[k].double() for k, v in model.state_dict().items()}
    out = DnCNN(model.channels, model.depth, model.head.conv.out_channels, batch_norm=False)
    out.load_state_dict({k: v.float() for k, v in blended.items()}, strict=True)
    return out.eval()


def _data_description(state: Mapping[str, Any], iterations: int) -> str:
    config: Mapping[str, Any] = state["config"]
    low, high = config["sigma_range"]
    noise = f"Gaussian sigma {low:g}" if low == high else f"Gaussian sigma uniform in [{low:g}, {high:g}]"
    validation = f"validation {config['val_set']} at sigma {config['val_sigma']}"
    if config.get("noise", "gaussian") != "gaussian":  # described by the trainer, in the checkpoint
        noise = f"{state.get('noise_description', config['noise'])}; gaussian_share {config.get('gaussian_share', 0.25):g}"
        validation += " averaged with the realistic families (training.dncnn.camera_testset)"
    train_set, patch = config["train_set"], config["patch_size"]
    start = f"; started from {config['init']}" if config.get("init") else ""
    return (
        f"{TRAIN_SETS.get(train_set, train_set)}; {patch}x{patch} patches, stride "
        f"{config['stride']}, scales {'/'.join(f'{s:g}' for s in config['scales'])}, 8 "
        f"flip/rotation modes; {noise}; {iterations} iterations x batch "
        f"{config['batch_size']}{start}; {validation}"
    )


def trained_entry(
    state: dict[str, Any], model: DnCNN, name: str, path: Path, command: str, default: bool
) -> Entry:
    """Manifest entry for an exported trained model (metrics filled by training.dncnn.evaluate)."""
    config: Mapping[str, Any] = state["config"]
    low, high = config["sigma_range"]
    minutes = float(state.get("elapsed_s", 0.0)) / 60
    iteration = int(state["iteration"])
    return {
        "name": name,
        "task": "denoise",
        "file": path.name,
        "sha256": sha256_file(path),
        "version": VERSION,
        "channels": model.channels,
        "sigma": (int(low) if float(low).is_integer() else low) if low == high else None,
        "overlap": model.depth,  # receptive-field radius: one pixel per 3x3 conv
        "multiple": 1,
        "default": default,
        "noise": "camera" if config.get("noise") == "camera" else "gaussian",  # sigma=auto's routing (restore.core.manifest)
        "provenance": {
            "source": "trained",
            "origin": ORIGIN,
            "license": FINE_TUNED_LICENSE if config.get("init") else "MIT",
            "command": state.get("command", ""),
            "data": _data_description(state, iteration),
            "machine": state.get("machine", ""),
            "duration": f"{minutes:.1f} min of training (iteration {iteration}, "
                        f"validation included)",
            "checkpoint_val_psnr": {
                config["val_set"]: {str(config["val_sigma"]): state.get("best_psnr")}
            },
            "exported_by": command,
        },
        "metrics": {},
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export.dncnn_trained", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt")
    parser.add_argument("--name", required=True, help="manifest name, e.g. dncnn-gray-s25-ours")
    parser.add_argument("--out", type=Path, required=True, help="folder holding manifest.json")
    parser.add_argument("--default", action="store_true",
                        help="load it by default (only if it beats the authors' weights)")
    parser.add_argument("--blend", type=float, metavar="ALPHA",
                        help="export ALPHA x the trained weights + (1 - ALPHA) x the --init model the run "
                             "started from (WiSE-FT weight-space ensembling; fine-tuned runs only)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    command = "python -m export.dncnn_trained " + shlex.join(
        ["--checkpoint", str(args.checkpoint), "--name", args.name, "--out", str(args.out)]
        + (["--default"] if args.default else []) + (["--blend", f"{args.blend:g}"] if args.blend is not None else [])
    )
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)  # no pickled code
    model = fold_batch_norm(model_from_checkpoint(state))
    if args.blend is not None:
        init = state["config"].get("init")
        if not init:
            raise SystemExit("--blend needs a run that started from --init (its checkpoint names none)")
        model = blend_with_init(model, dncnn_from_onnx(onnx.load(str(init))), args.blend)
    path = args.out / f"{args.name}.onnx"
    diff = export_onnx(model, path, (1, model.channels, EXPORT_HW, EXPORT_HW))
    entry = trained_entry(state, model, args.name, path, command, args.default)
    if args.blend is not None:
        entry["provenance"]["blend"] = (
            f"{args.blend:g} x these trained weights + {1 - args.blend:g} x {init} (its starting point): "
            "WiSE-FT weight-space ensembling, Wortsman et al., CVPR 2022"
        )
    manifest_path = args.out / MANIFEST_NAME
    update_manifest(manifest_path, lambda current: merge_keeping_metrics(current, [entry]))
    print(f"{args.name}: {path} ({path.stat().st_size / 2**20:.2f} MiB), ORT parity {diff:.2e}, "
          f"iteration {state['iteration']}, default {args.default}; manifest {manifest_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
