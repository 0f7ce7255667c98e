"""GCANet: the gated context aggregation network for dehazing (Chen et al., WACV 2019).

    @inproceedings{chen2019gcanet,
      title={Gated Context Aggregation Network for Image Dehazing and Deraining},
      author={Chen, Dongdong and He, Mingming and Fan, Qingnan and Liao, Jing and Zhang, Liheng and
              Hou, Dongdong and Yuan, Lu and Hua, Gang}, booktitle={WACV}, year={2019}}

Upstream: https://github.com/cddlyf/GCANet (no licence file; its README: "for research purpose
only"); the released ``models/wacv_gcanet_dehaze.pth`` (trained on RESIDE ITS) is a haze teacher
candidate, used in training only.

Three 3x3 convolutions (the third of stride 2) encode the input; seven residual blocks at half
resolution aggregate context, six of them *smoothed dilated*: before each dilated 3x3 convolution
(dilation 2, then 4) a separable convolution shared by all channels (one ``2d - 1`` square kernel,
initialised to the identity) mixes each pixel's neighbourhood, which removes the gridding
artefacts of dilated convolutions. A 3x3 convolution computes three gates from the encoder output
and two block outputs (after blocks 1, 4 and 7), whose gated sum is decoded by a 4x4 stride-2
transposed convolution, a 3x3 convolution and a 1x1 convolution to RGB. Instance norms (affine)
follow every convolution but the gate and the last.

Conventions (the authors' ``test.py``): input of 4 channels, RGB in ``[0, 255]`` and an edge map
(see ``training.weather.teachers``), all minus 128; sides even (the authors resize to multiples of
4); the dehazing model predicts the residual to add to the ``[0, 255]`` input. Module names follow
the released state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GCANet", "PARAMETERS", "MULTIPLE"]

#: Learnable parameters of the released ``wacv_gcanet_dehaze.pth`` (a test checks the architecture).
PARAMETERS = 702_818
#: Input sides must be multiples of this (the authors' choice; one stride-2 stage needs 2).
MULTIPLE = 4


class SharedSeparableConv(nn.Module):
    """One ``kernel`` x ``kernel`` filter applied to every channel alone (the paper's smoothing)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        weight = torch.zeros(1, 1, kernel, kernel)
        weight[0, 0, kernel // 2, kernel // 2] = 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        kernel = self.weight.expand(channels, 1, *self.weight.shape[2:])
        return F.conv2d(x, kernel, padding=self.weight.shape[-1] // 2, groups=channels)


class ResidualBlock(nn.Module):
    """Two (dilated) 3x3 convolutions with instance norms; ``smooth`` puts a shared separable
    convolution before each (for dilation ``d`` its kernel is ``2d - 1``)."""

    def __init__(self, channels: int, dilation: int = 1, smooth: bool = True) -> None:
        super().__init__()
        self.smooth = smooth
        if smooth:
            self.pre_conv1 = SharedSeparableConv(2 * dilation - 1)
            self.pre_conv2 = SharedSeparableConv(2 * dilation - 1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre_conv1(x) if self.smooth else x
        y = F.relu(self.norm1(self.conv1(y)))
        y = self.pre_conv2(y) if self.smooth else y
        return F.relu(x + self.norm2(self.conv2(y)))


class GCANet(nn.Module):
    """``in_channels`` (RGB + edge, minus 128) to 3 channels: a residual when ``residual`` (dehazing),
    else the image through a final ReLU (the authors' deraining model)."""

    def __init__(self, in_channels: int = 4, channels: int = 64, residual: bool = True) -> None:
        super().__init__()
        c = channels
        self.residual = residual
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(c, affine=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm2d(c, affine=True)
        self.conv3 = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False)
        self.norm3 = nn.InstanceNorm2d(c, affine=True)
        for k, dilation in enumerate((2, 2, 2, 4, 4, 4), start=1):
            self.add_module(f"res{k}", ResidualBlock(c, dilation))
        self.res7 = ResidualBlock(c, 1, smooth=False)
        self.gate = nn.Conv2d(3 * c, 3, 3, padding=1)
        self.deconv3 = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)
        self.norm4 = nn.InstanceNorm2d(c, affine=True)
        self.deconv2 = nn.Conv2d(c, c, 3, padding=1)
        self.norm5 = nn.InstanceNorm2d(c, affine=True)
        self.deconv1 = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y1 = F.relu(self.norm3(self.conv3(y)))
        y = y1
        levels = [y1]
        for k in range(1, 8):
            y = getattr(self, f"res{k}")(y)
            if k in (4, 7):
                levels.append(y)
        gates = self.gate(torch.cat(levels, 1))
        y = sum(level * gates[:, k : k + 1] for k, level in enumerate(levels))
        y = F.relu(self.norm4(self.deconv3(y)))
        y = F.relu(self.norm5(self.deconv2(y)))
        y = self.deconv1(y)
        return y if self.residual else F.relu(y)
