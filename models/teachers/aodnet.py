"""AOD-Net: the all-in-one dehazing network (Li et al., ICCV 2017).

    @inproceedings{li2017aodnet,
      title={AOD-Net: All-in-One Dehazing Network},
      author={Li, Boyi and Peng, Xiulian and Wang, Zhangyang and Xu, Jizheng and Feng, Dan},
      booktitle={ICCV}, year={2017}}

Weights: https://github.com/MayankSingal/PyTorch-Image-Dehazing (MIT), ``snapshots/dehazer.pth``
(trained on the authors' NYU2 synthetic haze), a haze teacher candidate: tiny (1,761 parameters)
and weak, kept as the floor any haze teacher must beat.

The paper folds the atmospheric scattering model ``I = J t + A (1 - t)`` into one map:
``J = K(I) I - K(I) + b`` with ``b = 1``, where K is estimated by five small convolutions
(1x1, 3x3, 5x5, 7x7, 3x3, three channels each) whose inputs concatenate earlier outputs
(conv3 <- conv1, conv2; conv4 <- conv2, conv3; conv5 <- all four), each followed by a ReLU, as is
the result. Input and output RGB in ``[0, 1]``, any size. Module names follow the released file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AODNet", "PARAMETERS"]

#: Learnable parameters of the released ``dehazer.pth`` (a test checks the architecture).
PARAMETERS = 1_761


class AODNet(nn.Module):
    """Hazy RGB in ``[0, 1]`` to dehazed RGB (non-negative; clamp for display)."""

    def __init__(self) -> None:
        super().__init__()
        self.e_conv1 = nn.Conv2d(3, 3, 1)
        self.e_conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.e_conv3 = nn.Conv2d(6, 3, 5, padding=2)
        self.e_conv4 = nn.Conv2d(6, 3, 7, padding=3)
        self.e_conv5 = nn.Conv2d(12, 3, 3, padding=1)

    def forward(self, hazy: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.e_conv1(hazy))
        x2 = F.relu(self.e_conv2(x1))
        x3 = F.relu(self.e_conv3(torch.cat((x1, x2), 1)))
        x4 = F.relu(self.e_conv4(torch.cat((x2, x3), 1)))
        k = F.relu(self.e_conv5(torch.cat((x1, x2, x3, x4), 1)))
        return F.relu(k * hazy - k + 1.0)
