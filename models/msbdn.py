"""MSBDN-RDFF: the restoration network of the two-stage knowledge learning method.

Chen, Wei-Ting et al., "Learning Multiple Adverse Weather Removal via Two-stage Knowledge Learning
and Multi-contrastive Regularization: Toward a Unified Model", CVPR 2022. Teachers and student
share this architecture: MSBDN (Dong et al., "Multi-Scale Boosted Dehazing Network with Dense
Feature Fusion", CVPR 2020) whose encoder/decoder stages hold residual dense blocks (RDB) beside
the dense feature fusion (DFF) modules, as in the authors' ``models/MSBDN-RDFF.py``:

* 11x11 input conv 3 -> C, three residual blocks;
* four stride-2 stages C -> 2C -> 4C -> 8C -> 16C; at each, the channels split in half: one half
  goes through DFF with all shallower encoder features (back-projection, mode ``iter2``), the other
  through an RDB (4 dense layers); then three residual blocks;
* ``res_blocks`` residual blocks at 1/16 scale (18 in the paper), entered as ``2 x`` and left as
  ``blocks(2x) + 2x - x`` (the authors' boosting form);
* four transposed-conv upsamplings (3x3, stride 2, cropped to the skip's size; the authors resize
  bilinearly instead, which breaks tiling, see ``DecoderStage``),
  strengthen-operate-subtract residual blocks, decoder DFF and RDB on the two halves;
* output 3x3 conv C -> 3 (no clamp; no global residual in the authors' network: ``residual=True``
  adds the input to the output, which a short training budget needs, see ``training.weather.train``).

``C = 16`` in the paper (28.71 M parameters with 18 bottleneck blocks). ``width`` scales every
channel count (``C = 16 * width``) and ``res_blocks`` sets the bottleneck depth, so the same code
trains a narrower network when compute is short.
Padding: reflection in the plain convs (as the authors), zero in the DFF's 4x4 (de)convolutions.
Input sides must be multiples of 32 (``MULTIPLE``): four stride-2 stages need 16, and the
reflection padding of the 1/16-scale residual blocks needs at least 2 pixels there. The service
pads by reflection to that.

``forward(x, return_features=True)`` also returns the four feature maps CKT distils (the authors'
choice): the 1/4-scale encoder output, the 1/8-scale one, the 1/16-scale bottleneck input and its
output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSBDN", "MSBDNConfig", "MULTIPLE", "build_msbdn", "feature_channels"]

#: Input sides must be multiples of this: 16 for the four stride-2 stages, and at least 2 px at
#: 1/16 scale for the bottleneck's reflection padding (a 16-px side fails there).
MULTIPLE = 32


@dataclass(frozen=True)
class MSBDNConfig:
    """Network size: ``width`` x the paper's channels, ``res_blocks`` bottleneck residual blocks."""

    width: float = 1.0
    res_blocks: int = 18
    residual: bool = False  # add the input to the output (global residual learning); not the authors'

    @property
    def base(self) -> int:
        base = round(16 * self.width)
        if base < 2 or base % 2:
            raise ValueError(f"width {self.width} gives {base} base channels: need an even >= 2")
        return base

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def feature_channels(config: MSBDNConfig) -> tuple[int, int, int, int]:
    """Channels of the four distilled feature maps (64, 128, 256, 256 at full width)."""
    c = config.base
    return (4 * c, 8 * c, 16 * c, 16 * c)


# --------------------------------------------------------------------------------------- blocks
class ConvLayer(nn.Sequential):
    """Reflection padding then a convolution (keeps borders free of zero-padding artefacts)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride))


class ResidualBlock(nn.Module):
    """conv-PReLU-conv scaled by 0.1, plus the input (the authors' residual scaling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.relu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv2(self.relu(self.conv1(x)))


def residual_stack(channels: int, count: int = 3) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(count)))


class DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, F.relu(self.conv(x))], dim=1)


class RDB(nn.Module):
    """Residual dense block: ``layers`` densely connected convs, 1x1 fusion, input added."""

    def __init__(self, channels: int, layers: int = 4, growth: int | None = None) -> None:
        super().__init__()
        growth = growth or channels
        self.dense = nn.Sequential(
            *(DenseLayer(channels + i * growth, growth) for i in range(layers))
        )
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fuse(self.dense(x))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.PReLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.PReLU())


def back_project(
    x: torch.Tensor, features: list[torch.Tensor], there: nn.ModuleList, back: nn.ModuleList
) -> torch.Tensor:
    """DFF mode ``iter2``: for feature ``i``, take the running fusion ``depth - i`` scale steps
    ``there`` (to that feature's scale), subtract the feature, bring the difference ``back`` and
    add it. Encoder and decoder differ only in which way ``there`` goes."""
    fused = x
    depth = len(there)
    for i, feature in enumerate(features):
        steps = depth - i
        y = fused
        for j in range(steps):
            y = there[j](y)
        y = y - feature
        for j in range(steps):
            y = back[steps - j - 1](y)
        fused = fused + y
    return fused


class EncoderFusion(nn.Module):
    """Encoder dense feature fusion (DFF, the authors' ``Encoder_MDCBlock1``, mode ``iter2``).

    The current (coarse, ``channels``-wide) half is back-projected against every shallower
    encoder feature in turn: upsample to that feature's scale, take the difference, bring the
    difference back down and add it.
    """

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.depth = levels - 1
        self.ups = nn.ModuleList(_up(channels >> i, channels >> (i + 1)) for i in range(self.depth))
        self.downs = nn.ModuleList(
            _down(channels >> (i + 1), channels >> i) for i in range(self.depth)
        )

    def forward(self, x: torch.Tensor, shallower: list[torch.Tensor]) -> torch.Tensor:
        return back_project(x, shallower, self.ups, self.downs)


class DecoderFusion(nn.Module):
    """Decoder dense feature fusion (``Decoder_MDCBlock1``, mode ``iter2``): the mirror image,
    back-projecting the current (fine) half against every coarser decoder feature."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.depth = levels - 1
        self.downs = nn.ModuleList(
            _down(channels << i, channels << (i + 1)) for i in range(self.depth)
        )
        self.ups = nn.ModuleList(_up(channels << (i + 1), channels << i) for i in range(self.depth))

    def forward(self, x: torch.Tensor, coarser: list[torch.Tensor]) -> torch.Tensor:
        return back_project(x, coarser, self.downs, self.ups)


class EncoderStage(nn.Module):
    """Stride-2 conv to ``2 x`` channels; DFF on one half, RDB on the other; residual blocks."""

    def __init__(self, cin: int, level: int, blocks: bool = True) -> None:
        super().__init__()
        cout = 2 * cin
        self.down = ConvLayer(cin, cout, 3, stride=2)
        self.fusion = EncoderFusion(cout // 2, level + 1)
        self.rdb = RDB(cout // 2)
        self.blocks = residual_stack(cout) if blocks else None  # none at 1/16: the bottleneck

    def forward(self, x: torch.Tensor, memory: list[torch.Tensor]) -> torch.Tensor:
        a, b = self.down(x).chunk(2, dim=1)
        a = self.fusion(a, memory)
        memory.append(a)
        y = torch.cat([a, self.rdb(b)], dim=1)
        return y if self.blocks is None else self.blocks(y) + y


class DecoderStage(nn.Module):
    """Transposed-conv upsampling to the skip's size, strengthen-operate-subtract residual blocks,
    then DFF on one half and RDB on the other.

    Deviation from the authors' code, for the service: their ``F.upsample(..., size)`` of the
    2n+1-pixel transposed-conv output to 2n pixels samples at positions scaled by (2n+1)/2n, so
    a pixel's output depends on the size of the image it sits in and tiled inference cannot
    match whole-image inference (measured: 30-33 dB tiled vs whole at any margin). The crop keeps
    the network translation-equivariant (shifts by multiples of 32), the weights unchanged.
    """

    def __init__(self, cin: int, level: int) -> None:
        super().__init__()
        cout = cin // 2
        self.up = nn.ConvTranspose2d(cin, cout, 3, stride=2)
        self.blocks = residual_stack(cout)
        self.fusion = DecoderFusion(cout // 2, level + 1)
        self.rdb = RDB(cout // 2)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, memory: list[torch.Tensor], last: bool
    ) -> torch.Tensor:
        # The authors resize the (2n + 1)-pixel output to 2n bilinearly: sampling positions that
        # depend on the image size, so a tile would not match the whole image. Dropping the extra
        # row and column instead is the same map up to a sub-pixel shift, and equivariant.
        up = self.up(x)[..., : skip.shape[-2], : skip.shape[-1]]
        y = up + skip
        y = self.blocks(y) + y - up
        a, b = y.chunk(2, dim=1)
        a = self.fusion(a, memory)
        if not last:
            memory.append(a)
        return torch.cat([a, self.rdb(b)], dim=1)


# ---------------------------------------------------------------------------------------- model
class MSBDN(nn.Module):
    """MSBDN-RDFF on RGB in ``[0, 1]`` (sides multiples of ``MULTIPLE``) -> restored RGB."""

    def __init__(self, config: MSBDNConfig | None = None) -> None:
        super().__init__()
        self.config = config or MSBDNConfig()
        c = self.config.base
        self.head = ConvLayer(3, c, 11)
        self.head_blocks = residual_stack(c)
        self.encoder = nn.ModuleList(EncoderStage(c << k, k + 1, blocks=k < 3) for k in range(4))
        self.bottleneck = residual_stack(16 * c, self.config.res_blocks)
        self.decoder = nn.ModuleList(DecoderStage(16 * c >> k, k + 1) for k in range(4))
        self.tail = ConvLayer(c, 3, 3)
        if self.config.residual:  # start as the identity: the network learns the correction
            nn.init.zeros_(self.tail[1].weight)
            nn.init.zeros_(self.tail[1].bias)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        head = self.head(x)
        memory = [head.chunk(2, dim=1)[0]]
        y = self.head_blocks(head) + head
        skips = [y]
        features: list[torch.Tensor] = []
        for k, stage in enumerate(self.encoder):
            y = stage(y, memory)
            skips.append(y)
            if k >= 1:
                features.append(y)  # 1/4, 1/8 and 1/16 (before the bottleneck)
        doubled = 2 * y
        y = self.bottleneck(doubled) + doubled - y
        features.append(y)
        memory_up = [y.chunk(2, dim=1)[0]]
        for k, stage in enumerate(self.decoder):
            y = stage(y, skips[3 - k], memory_up, last=k == 3)
        out = self.tail(y)
        if self.config.residual:
            out = out + x
        return (out, features) if return_features else out

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward(x, return_features=True)``: the interface the weather trainer uses for every
        architecture (``models.weathernet.WeatherNet`` has the same method)."""
        out, features = self.forward(x, return_features=True)  # type: ignore[misc]
        return out, features


def build_msbdn(width: float = 1.0, res_blocks: int = 18, residual: bool = False) -> MSBDN:
    return MSBDN(MSBDNConfig(width=width, res_blocks=res_blocks, residual=residual))
