"""Convert the DnCNN authors' MatConvNet models to PyTorch state dicts.

Source: https://github.com/cszn/DnCNN, folder ``model/``.

The released ``.mat`` files are MATLAB v7.3 (HDF5). ``net.layers`` is a cell array of structs whose
``type`` is ``conv`` or ``relu`` only: BatchNorm was merged into the convolutions before release,
so the target is ``models.dncnn.DnCNN(batch_norm=False)``.

Two layout quirks of reading MATLAB arrays through h5py (which sees the column-major data
transposed):

* a conv weight comes out as ``(Cout, Cin, W, H)``; PyTorch wants ``(Cout, Cin, H, W)``, hence
  ``transpose(0, 1, 3, 2)``;
* MATLAB drops trailing singleton dimensions, so the gray output layer (``Cout = 1``) arrives as
  ``(Cin, W, H)``: the leading 1 is restored. Biases arrive as ``(1, Cout)``.

``matconvnet_to_state_dict`` is pure (arrays in, tensors out); ``load_matconvnet_layers`` does the
file reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "ConvLayer",
    "load_matconvnet_layers",
    "matconvnet_to_state_dict",
    "dncnn_state_dict_keys",
    "kair_to_state_dict",
]


@dataclass(frozen=True)
class ConvLayer:
    """One MatConvNet conv layer as read through h5py (layout untouched)."""

    weight: np.ndarray
    bias: np.ndarray
    pad: tuple[int, ...]
    stride: tuple[int, ...]


def _chars(dataset: object) -> str:
    """Decode a MATLAB char array (uint16 codes) read through h5py."""
    return "".join(chr(int(c)) for c in np.asarray(dataset).ravel())


def load_matconvnet_layers(path: str | Path) -> list[ConvLayer]:
    """Read the conv layers of a MatConvNet simplenn ``.mat`` (v7.3), checking the layer pattern.

    The network must alternate conv/relu and end with a conv: anything else (a BatchNorm layer, a
    loss layer) means this is not a folded DnCNN and conversion would silently be wrong.
    """
    import h5py  # noqa: PLC0415 (optional: only the converter needs HDF5)

    layers: list[ConvLayer] = []
    types: list[str] = []
    with h5py.File(path, "r") as handle:
        for ref in np.asarray(handle["net/layers"]).ravel():
            layer = handle[ref]
            kind = _chars(layer["type"][()])
            types.append(kind)
            if kind == "relu":
                continue
            if kind != "conv":
                raise ValueError(f"{path}: unsupported MatConvNet layer type {kind!r}")
            weight_ref, bias_ref = np.asarray(layer["weights"]).ravel()
            layers.append(
                ConvLayer(
                    weight=np.asarray(handle[weight_ref], dtype=np.float32),
                    bias=np.asarray(handle[bias_ref], dtype=np.float32),
                    pad=tuple(int(p) for p in np.asarray(layer["pad"]).ravel()),
                    stride=tuple(int(s) for s in np.asarray(layer["stride"]).ravel()),
                )
            )
    expected = ["conv", "relu"] * (len(layers) - 1) + ["conv"]
    if types != expected:
        raise ValueError(f"{path}: layer pattern {types} is not conv/relu alternating")
    return layers


def dncnn_state_dict_keys(depth: int) -> list[tuple[str, str]]:
    """(weight key, bias key) of each conv of ``DnCNN(batch_norm=False)``, input to output."""
    keys = [("head.conv.weight", "head.conv.bias")]
    keys += [(f"body.{i}.conv.weight", f"body.{i}.conv.bias") for i in range(depth - 2)]
    keys.append(("tail.weight", "tail.bias"))
    return keys


def _to_torch_weight(weight: np.ndarray) -> np.ndarray:
    if weight.ndim == 3:  # Cout = 1 was dropped by MATLAB
        weight = weight[np.newaxis]
    if weight.ndim != 4:
        raise ValueError(f"conv weight must be 3-D or 4-D, got shape {weight.shape}")
    return np.ascontiguousarray(weight.transpose(0, 1, 3, 2))


def matconvnet_to_state_dict(layers: Sequence[ConvLayer]) -> dict[str, torch.Tensor]:
    """Map MatConvNet conv layers (input to output) onto ``DnCNN(batch_norm=False)`` keys.

    Checks what the PyTorch model assumes: 3x3 kernels, padding 1, stride 1, and channel counts
    that chain from one layer to the next.
    """
    if len(layers) < 3:
        raise ValueError(f"a DnCNN has at least 3 conv layers, got {len(layers)}")
    state: dict[str, torch.Tensor] = {}
    previous_out: int | None = None
    for index, (layer, (w_key, b_key)) in enumerate(
        zip(layers, dncnn_state_dict_keys(len(layers)))
    ):
        if set(layer.pad) != {1} or set(layer.stride) != {1}:
            raise ValueError(f"layer {index}: pad {layer.pad} / stride {layer.stride}, expected 1")
        weight = _to_torch_weight(layer.weight)
        bias = layer.bias.reshape(-1)
        c_out, c_in, k_h, k_w = weight.shape
        if (k_h, k_w) != (3, 3):
            raise ValueError(f"layer {index}: kernel {k_h}x{k_w}, expected 3x3")
        if bias.shape != (c_out,):
            raise ValueError(f"layer {index}: bias shape {bias.shape}, expected ({c_out},)")
        if previous_out is not None and c_in != previous_out:
            raise ValueError(f"layer {index}: {c_in} input channels after {previous_out} outputs")
        previous_out = c_out
        state[w_key] = torch.from_numpy(weight)
        state[b_key] = torch.from_numpy(bias.copy())
    return state


def kair_to_state_dict(kair: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a KAIR ``DnCNN`` state dict (``model.{2k}.weight``) to ``DnCNN(batch_norm=False)``.

    Used only to cross-check the MatConvNet conversion against KAIR's independent one.
    """
    conv_indices = sorted({int(k.split(".")[1]) for k in kair if k.startswith("model.")})
    keys = dncnn_state_dict_keys(len(conv_indices))
    state: dict[str, torch.Tensor] = {}
    for index, (w_key, b_key) in zip(conv_indices, keys):
        state[w_key] = kair[f"model.{index}.weight"]
        state[b_key] = kair[f"model.{index}.bias"]
    return state
