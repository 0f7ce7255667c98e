"""DnCNN: a residual-learning CNN that predicts the noise of an image and subtracts it.

Paper::

    @article{zhang2017beyond,
      title   = {Beyond a {Gaussian} Denoiser: Residual Learning of Deep {CNN} for Image Denoising},
      author  = {Zhang, Kai and Zuo, Wangmeng and Chen, Yunjin and Meng, Deyu and Zhang, Lei},
      journal = {IEEE Transactions on Image Processing},
      volume  = {26},
      number  = {7},
      pages   = {3142--3155},
      year    = {2017},
      doi     = {10.1109/TIP.2017.2662206}
    }

Upstream: https://github.com/cszn/DnCNN (MatConvNet; the repository states no licence, its trained
models are shared for research use). This file is an independent PyTorch re-implementation under
the project's MIT licence; weight conversion lives in ``export/dncnn_matconvnet.py``.

Layout follows the rest of ``models/``: blocks, model, builder, configs. No file I/O here.

Input and output are ``(N, C, H, W)`` float tensors in ``[0, 1]`` (the scale the authors trained
on); the network is fully convolutional with zero padding, so any ``H, W >= 1`` works, and each
output pixel depends on a ``(2 * depth + 1)``-pixel square of input (``depth`` 3x3 convolutions):
tiling needs an overlap of ``depth`` pixels to be seamless.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

import torch
from torch import nn

__all__ = ["ConvBNReLU", "DnCNN", "DnCNNConfig", "DNCNN_CONFIGS", "build_dncnn", "dncnn_config"]

# MatConvNet's vl_nnbnorm epsilon, which the authors trained with (PyTorch's default is 1e-5).
_BN_EPS = 1e-4


# --------------------------------------------------------------------------------------- blocks
def _conv3x3(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """3x3 convolution with zero padding 1: keeps the spatial size, as in the paper."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


class ConvBNReLU(nn.Sequential):
    """One middle layer of DnCNN: Conv 3x3 -> (BatchNorm) -> ReLU.

    With ``batch_norm=True`` (training from scratch, as in the paper) the convolution has no bias
    because BatchNorm's shift makes it redundant. With ``batch_norm=False`` (the authors' released
    models, where BatchNorm is folded into the convolution) the convolution carries the bias.
    """

    def __init__(self, features: int, batch_norm: bool) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = _conv3x3(features, features, bias=not batch_norm)
        if batch_norm:
            layers["bn"] = nn.BatchNorm2d(features, eps=_BN_EPS)
        layers["relu"] = nn.ReLU(inplace=True)
        super().__init__(layers)


# ---------------------------------------------------------------------------------------- model
class DnCNN(nn.Module):
    """DnCNN with residual learning: ``output = input - net(input)``.

    ``net`` is ``depth`` convolutions: Conv+ReLU, ``depth - 2`` x Conv+BN+ReLU, Conv. The network
    estimates the noise rather than the clean image because, as the paper argues, the residual is
    easier to learn and BatchNorm and residual learning help each other.

    Args:
        channels: image channels, 1 (gray) or 3 (color, RGB).
        depth: number of convolution layers (17 for sigma-specific gray, 20 for blind and color).
        features: width of the hidden layers (64 in the paper).
        batch_norm: BatchNorm in the middle layers; ``False`` for the authors' released weights.
    """

    def __init__(
        self, channels: int = 1, depth: int = 17, features: int = 64, batch_norm: bool = True
    ) -> None:
        super().__init__()
        if channels < 1 or features < 1:
            raise ValueError(f"channels and features must be positive, got {channels}, {features}")
        if depth < 3:
            raise ValueError(f"depth must be >= 3 (head, one middle layer, tail), got {depth}")
        self.channels = channels
        self.depth = depth
        self.head = nn.Sequential(
            OrderedDict(conv=_conv3x3(channels, features, bias=True), relu=nn.ReLU(inplace=True))
        )
        self.body = nn.Sequential(*(ConvBNReLU(features, batch_norm) for _ in range(depth - 2)))
        self.tail = _conv3x3(features, channels, bias=True)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context each output pixel sees on every side (one per 3x3 convolution)."""
        return self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x`` (N, C, H, W) in [0, 1]; output is not clipped (callers clip)."""
        noise = self.tail(self.body(self.head(x)))
        return x - noise


# -------------------------------------------------------------------------------------- builder
def build_dncnn(config: str | DnCNNConfig, *, batch_norm: bool | None = None) -> DnCNN:
    """Build a DnCNN from a named config (see ``DNCNN_CONFIGS``) or a ``DnCNNConfig``.

    ``batch_norm`` overrides the config, e.g. ``False`` to receive folded weights.
    """
    cfg = dncnn_config(config) if isinstance(config, str) else config
    return DnCNN(
        channels=cfg.channels,
        depth=cfg.depth,
        features=cfg.features,
        batch_norm=cfg.batch_norm if batch_norm is None else batch_norm,
    )


# -------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class DnCNNConfig:
    """Architecture hyper-parameters of one DnCNN variant (the paper's Sec. IV-A)."""

    channels: int
    depth: int
    features: int = 64
    batch_norm: bool = True


DNCNN_CONFIGS: Mapping[str, DnCNNConfig] = MappingProxyType(
    {
        # DnCNN-S: gray, one model per known noise level, 17 layers.
        "dncnn-s": DnCNNConfig(channels=1, depth=17),
        # DnCNN-B: gray, blind over sigma in [0, 55], 20 layers.
        "dncnn-b": DnCNNConfig(channels=1, depth=20),
        # CDnCNN-B: color, blind, 20 layers.
        "cdncnn-b": DnCNNConfig(channels=3, depth=20),
        # CDnCNN-S: color, per noise level; the released color specifics have 20 layers.
        "cdncnn-s": DnCNNConfig(channels=3, depth=20),
    }
)


def dncnn_config(
    name: str, *, depth: int | None = None, features: int | None = None
) -> DnCNNConfig:
    """Look up a named config, ``depth`` / ``features`` replaced where given (a trained variant's
    overrides); unknown names fail loudly with the known ones listed."""
    try:
        base = DNCNN_CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(DNCNN_CONFIGS))
        raise KeyError(f"unknown DnCNN config {name!r}; known: {known}") from None
    return replace(base, depth=depth or base.depth, features=features or base.features)
