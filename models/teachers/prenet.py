"""PReNet: a progressive recurrent deraining network (Ren et al., CVPR 2019).

    @inproceedings{ren2019prenet,
      title={Progressive Image Deraining Networks: A Better and Simpler Baseline},
      author={Ren, Dongwei and Zuo, Wangmeng and Hu, Qinghua and Zhu, Pengfei and Meng, Deyu},
      booktitle={CVPR}, year={2019}}

Why it is here: the public PReNet6 weights (trained on Rain100H, Rain100L or Rain1400) remove rain
rendered by other people far better than our own rain teachers (``docs/weather.md``), so they
teach the weather student its rain. The network is small (169 k parameters) but runs six stages
at full resolution, which is what thin streaks need and what a CPU pays for; hence a teacher, not
the served model.

One stage: the input and the previous estimate (6 channels) go through a 3x3 convolution, a
convolutional LSTM cell (gates from the features and the hidden state), five residual blocks of
two 3x3 convolutions, and a 3x3 convolution back to RGB added to the input. Inputs are RGB in
``[0, 1]``, any size (no downsampling); the authors clamp the output to ``[0, 1]``.
Parameter names follow the released state dicts (``conv0``, ``res_conv1..5``, ``conv_i/f/g/o``,
``conv``), so ``load_state_dict`` reads them unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PReNet", "PARAMETERS"]

#: Parameters of the released PReNet6 files (a test checks the architecture against it).
PARAMETERS = 168_963


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class PReNet(nn.Module):
    """``stages`` recurrent stages of 32 channels; ``forward`` returns the last stage's estimate."""

    def __init__(self, stages: int = 6, channels: int = 32, res_blocks: int = 5) -> None:
        super().__init__()
        c = channels
        self.stages = stages
        self.conv0 = nn.Sequential(_conv(6, c), nn.ReLU())
        for k in range(1, res_blocks + 1):
            self.add_module(f"res_conv{k}", nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU()))
        self.res_blocks = res_blocks
        self.conv_i = nn.Sequential(_conv(2 * c, c), nn.Sigmoid())
        self.conv_f = nn.Sequential(_conv(2 * c, c), nn.Sigmoid())
        self.conv_g = nn.Sequential(_conv(2 * c, c), nn.Tanh())
        self.conv_o = nn.Sequential(_conv(2 * c, c), nn.Sigmoid())
        self.conv = nn.Sequential(_conv(c, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        estimate = image
        n, _, h, w = image.shape
        hidden = image.new_zeros(n, self.conv_i[0].out_channels, h, w)
        cell = torch.zeros_like(hidden)
        for _ in range(self.stages):
            x = torch.cat((self.conv0(torch.cat((image, estimate), 1)), hidden), 1)
            cell = self.conv_f(x) * cell + self.conv_i(x) * self.conv_g(x)
            hidden = self.conv_o(x) * torch.tanh(cell)
            x = hidden
            for k in range(1, self.res_blocks + 1):
                x = torch.relu(getattr(self, f"res_conv{k}")(x) + x)
            estimate = image + self.conv(x)
        return estimate
