"""UMRL: uncertainty-guided multi-scale residual learning for deraining (Yasarla & Patel, CVPR 2019).

    @inproceedings{yasarla2019umrl,
      title={Uncertainty Guided Multi-Scale Residual Learning-Using a Cycle Spinning CNN for
             Single Image De-Raining},
      author={Yasarla, Rajeev and Patel, Vishal M.}, booktitle={CVPR}, year={2019}}

Upstream: https://github.com/rajeevyasarla/UMRL--using-Cycle-Spinning (MIT); the released weights
``pre_trained/Net_DIDMDN.pth`` (trained on DID-MDN's Rain1200) are a rain teacher candidate.

The network is an encoder-decoder of densely connected bottleneck blocks (BatchNorm, ReLU, 1x1
conv to 4k channels, BatchNorm, ReLU, 5x5 conv to k channels, concatenated to the input) and
transition blocks (BatchNorm, ReLU, 1x1 conv, then average-pool, nearest upsample or nothing):
four halvings down to 1/16 scale, back up to full resolution. At 1/4 and 1/2 scale a shared
*residual estimator* predicts the rain streaks of that scale (tanh) and a shared *confidence
network* weighs them (sigmoid, the paper's uncertainty map); the weighted residual joins the next
decoder stage. At full resolution a last residual is subtracted from the input and two refining
convolutions (7x7 to 8 channels, 3x3 back to RGB, tanh) give the clean image.

Conventions (the authors' ``umrl_test.py``): RGB normalised to ``[-1, 1]``; sides multiples of 16
(four halvings whose features are concatenated on the way up); output in ``[-1, 1]``. The authors
ran their test script with the network in *training* mode, i.e. BatchNorm on the statistics of the
image itself rather than the stored running averages; ``training.weather.teachers`` does the same
(and says what each choice measured). Module names follow the released
state dict, which also holds four parameter tensors the forward pass never reads
(``batchnorm20``, ``batchnorm1``, ``conf_res.conv_refin``): kept so that the file loads strictly.
The authors' transition blocks use 1x1 *transposed* convolutions (a 1x1 convolution with the
weight's two channel axes swapped); kept for the same reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UMRL", "PARAMETERS", "MULTIPLE"]

#: Learnable parameters of the released ``Net_DIDMDN.pth`` (a test checks the architecture).
PARAMETERS = 984_356
#: Input sides must be multiples of this (four halvings, concatenated with the upsampled path).
MULTIPLE = 16


class Bottleneck(nn.Module):
    """Dense bottleneck: ``cat(x, conv_k(relu(bn(conv_1(relu(bn(x)))))))``, ``growth`` new channels."""

    def __init__(self, channels: int, growth: int, kernel: int) -> None:
        super().__init__()
        inner = 4 * growth
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        return torch.cat((x, self.conv2(F.relu(self.bn2(y)))), 1)


class Transition(nn.Module):
    """BatchNorm, ReLU, 1x1 (transposed) convolution, then ``scale``: 0.5 pools, 2 upsamples."""

    def __init__(self, cin: int, cout: int, scale: float = 1.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.ConvTranspose2d(cin, cout, 1, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        if self.scale == 0.5:
            return F.avg_pool2d(y, 2)
        if self.scale == 2:
            return F.interpolate(y, scale_factor=2.0, mode="nearest")
        return y


class ResidualEstimator(nn.Module):
    """The rain residual of one scale from decoder features (64 channels in, RGB in ``[-1, 1]`` out)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Bottleneck(64, 32, 3)
        self.trans_block1 = Transition(96, 32)
        self.conv2 = Bottleneck(32, 32, 3)
        self.trans_block2 = Transition(64, 32)
        self.conv3 = Bottleneck(32, 32, 3)
        self.trans_block3 = Transition(64, 32)
        self.conv_refin = nn.Conv2d(32, 16, 3, padding=1)
        self.refine3 = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans_block1(self.conv1(x))
        x = self.trans_block2(self.conv2(x))
        x = self.trans_block3(self.conv3(x))
        return torch.tanh(self.refine3(F.leaky_relu(self.conv_refin(x), 0.2)))


class Confidence(nn.Module):
    """Per-pixel confidence in ``(0, 1)`` of a residual, from 32 feature channels and the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(35, 16, 3, padding=1)
        self.conv2 = Bottleneck(16, 16, 3)
        self.trans_block2 = Transition(32, 16)
        self.conv3 = Bottleneck(16, 16, 3)
        self.trans_block3 = Transition(32, 16)
        self.conv_refin = nn.Conv2d(16, 16, 3, padding=1)  # in the released file, unused by the authors
        self.refine3 = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans_block2(self.conv2(self.conv1(x)))
        x = self.trans_block3(self.conv3(x))
        return torch.sigmoid(self.refine3(x))


class UMRL(nn.Module):
    """The deraining network: ``[-1, 1]`` RGB (sides multiples of ``MULTIPLE``) to ``[-1, 1]`` RGB."""

    def __init__(self) -> None:
        super().__init__()
        self.dense_block1 = Bottleneck(3, 29, 5)
        self.trans_block1 = Transition(32, 32, 0.5)  # 1/2
        self.dense_block2 = Bottleneck(32, 32, 5)
        self.trans_block2 = Transition(64, 32, 0.5)  # 1/4
        self.dense_block3 = Bottleneck(32, 32, 5)
        self.trans_block3 = Transition(64, 32, 0.5)  # 1/8
        self.dense_block3_1 = Bottleneck(32, 32, 5)
        self.trans_block3_1 = Transition(64, 32, 0.5)  # 1/16
        self.dense_block3_2 = Bottleneck(32, 32, 5)
        self.trans_block3_2 = Transition(64, 32, 2)  # 1/8
        self.dense_block4 = Bottleneck(64, 32, 5)
        self.trans_block4 = Transition(96, 32, 2)  # 1/4
        self.dense_block5 = Bottleneck(67, 32, 5)
        self.trans_block5 = Transition(99, 32, 2)  # 1/2
        self.dense_block6 = Bottleneck(67, 16, 5)
        self.trans_block6 = Transition(83, 16, 2)  # 1
        self.dense_block6_1 = Bottleneck(16, 16, 5)
        self.trans_block6_1 = Transition(32, 16)
        self.conv_refin = nn.Conv2d(16, 16, 3, padding=1)
        self.refine3 = nn.Conv2d(16, 3, 3, padding=1)
        self.refineclean1 = nn.Conv2d(3, 8, 7, padding=3)
        self.refineclean2 = nn.Conv2d(8, 3, 3, padding=1)
        self.batchnorm20 = nn.BatchNorm2d(20)  # in the released file, unused by the authors
        self.batchnorm1 = nn.BatchNorm2d(1)  # likewise
        self.res_est = ResidualEstimator()
        self.conf_res = Confidence()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.trans_block1(self.dense_block1(x))
        x2 = self.trans_block2(self.dense_block2(x1))
        x3 = self.trans_block3(self.dense_block3(x2))
        x3_1 = self.trans_block3_1(self.dense_block3_1(x3))
        x3_2 = self.trans_block3_2(self.dense_block3_2(x3_1))
        x4 = self.trans_block4(self.dense_block4(torch.cat((x3_2, x3), 1)))
        x5 = self.trans_block5(self.dense_block5(torch.cat((x4, x2, self._weighted(x4, x2)), 1)))
        x6 = self.trans_block6(self.dense_block6(torch.cat((x5, x1, self._weighted(x5, x1)), 1)))
        x6 = self.trans_block6_1(self.dense_block6_1(x6))
        residual = torch.tanh(self.refine3(F.leaky_relu(self.conv_refin(x6), 0.2)))
        clean = F.leaky_relu(self.refineclean1(x - residual), 0.2)
        return torch.tanh(self.refineclean2(clean))

    def _weighted(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The residual of this scale times its confidence (the paper's uncertainty guidance)."""
        residual = self.res_est(torch.cat((decoder, skip), 1))
        return residual * self.conf_res(torch.cat((decoder, residual), 1))
