"""WeatherNet: a gated encoder-decoder that spends its compute at low resolution, for rain, haze and snow.

The unified weather model behind ``/derain``, ``/dehaze`` and ``/desnow`` (teachers and student of
two-stage knowledge learning share it). It is chosen over the paper's MSBDN-RDFF by equal-CPU-time
pilots (``docs/weather.md``): most of MSBDN-RDFF's work is at full resolution, where a CPU pays for
every pixel; here the channel count doubles at each of four 2x downsamplings and most blocks sit
at 1/8 and 1/16. No block runs at full resolution by default: measured on 2 CPU cores (training
step, batch 8 of 96x96, bfloat16), one block costs about 0.15 s at full resolution, 0.09 s at
1/2, 0.035 s at 1/4, 0.03 s at 1/8 and under 0.01 s at 1/16 - the memory-bound parts (norms,
gates, depthwise filters) dominate at high resolution. Full-resolution detail reaches the output
through the skip from the input convolution and the global residual.

Papers it draws on::

    @inproceedings{chen2022nafnet,
      title={Simple Baselines for Image Restoration},
      author={Chen, Liangyu and Chu, Xiaojie and Zhang, Xiangyu and Sun, Jian},
      booktitle={ECCV}, year={2022}}          # the block: LayerNorm, 1x1, depthwise 3x3,
                                              # SimpleGate, channel attention, gated FFN
    @inproceedings{chu2022tlc,
      title={Improving Image Restoration by Revisiting Global Information Aggregation},
      author={Chu, Xiaojie and Chen, Liangyu and Chen, Chengpeng and Lu, Xin},
      booktitle={ECCV}, year={2022}}          # channel statistics over a local window, not the image
    @inproceedings{qin2021fcanet,
      title={FcaNet: Frequency Channel Attention Networks},
      author={Qin, Zequn and Zhang, Pengyi and Wu, Fei and Li, Xi},
      booktitle={ICCV}, year={2021}}          # multi-spectral (2-D DCT) channel statistics
    @inproceedings{he2009dark,
      title={Single Image Haze Removal Using Dark Channel Prior},
      author={He, Kaiming and Sun, Jian and Tang, Xiaoou},
      booktitle={CVPR}, year={2009}}          # the scattering model the physical head inverts
    @inproceedings{chen2022tkl,
      title={Learning Multiple Adverse Weather Removal via Two-stage Knowledge Learning and
             Multi-contrastive Regularization: Toward a Unified Model},
      author={Chen, Wei-Ting and others}, booktitle={CVPR}, year={2022}}

Upstream shapes: https://github.com/megvii-research/NAFNet (MIT), https://github.com/cfzd/FcaNet
(MIT). This file is written here; it copies no code.

Choices, and why:

* **Local channel statistics.** NAFNet's attention pools over the whole image, which makes every
  output pixel depend on every input pixel: tiled inference could never equal whole-image
  inference, and a flat sky's colour would depend on what else is in the photo. Here the pooling
  is a fixed ``window`` x ``window`` neighbourhood at each level (``window * 2**level`` input
  pixels), separable, so the network stays convolutional (a finite receptive field the tiler can
  cover) and costs ``O(window)`` per pixel. TLC (Chu et al.) shows local statistics at test time
  even help restoration.
* **Attention kinds.** ``"pool"``: the local mean (NAFNet's simplified channel attention made
  local). ``"dct"``: FcaNet's multi-spectral statistics made local - the channels are split into
  groups and group ``g`` is filtered by the 2-D DCT-II basis function of the ``g``-th lowest
  frequency over the window (the (0, 0) basis is the mean). The bases are constant buffers used
  as a separable depthwise convolution: differentiable, exported to ONNX as two ``Conv`` nodes, and
  computed on whichever device the model runs on.
* **Heads.** ``"residual"``: ``J = I + R``. ``"physical"``: the scattering model
  ``I = J t + A (1 - t)`` inverted inside the network, ``J = (I - A (1 - t)) / t + R``, with the
  transmission ``t`` predicted at 1/4 resolution and the airlight ``A`` at 1/16 (both upsampled
  bilinearly, so both are smooth and local: coloured and non-uniform airlight allowed, tiles
  agree), ``t`` kept in ``[t_min, 1]`` by a sigmoid, ``R`` a full-resolution residual for rain and
  snow. One blind network can then undo haze exactly and remove streaks and flakes as residuals.
  It starts as the identity (``t`` near 1, ``R`` = 0), so a clean photo passes unchanged from the
  first step. The division runs in float32 even under bfloat16 autocast.
* LayerNorm over channels (per pixel, float32) in every block keeps bfloat16 training stable and
  keeps tiles exact; each block's two branches are scaled by zero-initialised ``beta``/``gamma``,
  so a new network is the identity.
* ``fuse_for_inference`` rewrites a trained network for export, the same function with cheaper
  ONNX nodes: the norms' scale and shift and the branch scales folded into the adjacent 1x1
  convolutions, channel means as 1x1 convolutions, each gate as two convolutions (1.31x the
  megapixels per second through ONNX Runtime on 2 CPU cores); then the norms and upsamplings
  written with the few ops ONNX Runtime's blocked (NCHWc) CPU layout keeps blocked, so tensors
  stop going back and forth between layouts (docs/benchmarks.md).
* Inputs: RGB in ``[0, 1]``; sides multiples of ``MULTIPLE`` (four 2x downsamplings).
  ``forward_features(x)`` also returns the four maps that CKT distils: the 1/4 and
  1/8 encoder outputs, and the 1/16 input and output of the middle blocks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MULTIPLE", "WEATHER_LABELS", "WeatherNet", "WeatherNetConfig", "build_weathernet",
    "feature_channels", "dct_frequencies", "fuse_for_inference", "is_fused", "weather_onehot",
    "adapt_state_dict",
]

#: Input sides must be multiples of this: four stride-2 downsamplings.
MULTIPLE = 16
LEVELS = 4
ATTENTIONS = ("pool", "dct")
HEADS = ("residual", "physical")
UPSAMPLES = ("shuffle", "bilinear")
#: The labels a conditioned network takes, in the order of its one-hot ``weather`` input.
#: ``unknown`` is the blind setting (``?weather=auto``); training shows it part of the time.
WEATHER_LABELS = ("rain", "haze", "snow", "unknown")


def weather_onehot(labels: "list[str] | tuple[str, ...]") -> torch.Tensor:
    """``(N, len(WEATHER_LABELS))`` float32 one-hot rows for the given label names."""
    out = torch.zeros(len(labels), len(WEATHER_LABELS))
    for row, label in enumerate(labels):
        out[row, WEATHER_LABELS.index(label)] = 1.0
    return out


# ---------------------------------------------------------------------------------------- blocks
class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel, computed in float32 (stable under bfloat16)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        mean = y.mean(1, keepdim=True)
        var = (y - mean).pow(2).mean(1, keepdim=True)
        y = (y - mean) * torch.rsqrt(var + self.eps)
        return (y * self.weight[:, None, None] + self.bias[:, None, None]).to(x.dtype)


def dct_frequencies(count: int) -> list[tuple[int, int]]:
    """The ``count`` lowest 2-D frequencies ``(u, v)`` in zig-zag order: (0,0), (0,1), (1,0), ..."""
    order: list[tuple[int, int]] = []
    total = 0
    while len(order) < count:
        diagonal = [(u, total - u) for u in range(total + 1)]
        order += diagonal[::-1] if total % 2 else diagonal
        total += 1
    return order[:count]


def dct_basis(size: int, frequency: int) -> torch.Tensor:
    """1-D DCT-II basis function ``frequency`` over ``size`` taps, scaled so (0) is the mean."""
    x = torch.arange(size, dtype=torch.float64)
    return (torch.cos(math.pi * frequency * (x + 0.5) / size) / size).float()


class LocalChannelStatistics(nn.Module):
    """Per-channel statistics over a ``window`` x ``window`` neighbourhood (separable, stride 1).

    ``"pool"``: the local mean (zero padding at the borders). ``"dct"``: channel group ``g`` of
    ``groups`` gets the ``g``-th lowest DCT-II basis function (the first group's is the mean).
    Both are the same constant separable depthwise convolution, only the bases differ: equal cost,
    and bfloat16 runs the oneDNN convolution kernels (average pooling in bfloat16 measured ~10x
    slower on this CPU).
    """

    def __init__(self, channels: int, kind: str, window: int, groups: int = 8) -> None:
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}")
        if window % 2 == 0:
            raise ValueError("the window must be odd (centred)")
        self.window = window
        groups = math.gcd(channels, groups) if kind == "dct" else 1
        rows, cols = [], []
        for u, v in dct_frequencies(groups):
            rows += [dct_basis(window, u)] * (channels // groups)
            cols += [dct_basis(window, v)] * (channels // groups)
        self.register_buffer("rows", torch.stack(rows)[:, None, :, None], persistent=False)
        self.register_buffer("cols", torch.stack(cols)[:, None, None, :], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad, channels = self.window // 2, x.shape[1]
        x = F.conv2d(x, self.rows.to(x.dtype), padding=(pad, 0), groups=channels)
        return F.conv2d(x, self.cols.to(x.dtype), padding=(0, pad), groups=channels)


class GatedBlock(nn.Module):
    """NAFNet's block with local channel attention: norm, 1x1, depthwise 3x3, gate, attend, 1x1;
    then norm, gated 1x1 feed-forward. Both branches start at zero (``beta``, ``gamma``)."""

    def __init__(self, channels: int, attention: str, window: int) -> None:
        super().__init__()
        c = channels
        self.norm1 = LayerNorm2d(c)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.depthwise = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.statistics = LocalChannelStatistics(c, attention, window)
        self.attend = nn.Conv2d(c, c, 1)
        self.project = nn.Conv2d(c, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.ffn_in = nn.Conv2d(c, 2 * c, 1)
        self.ffn_out = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.depthwise(self.expand(self.norm1(x))).chunk(2, dim=1)
        y = a * b
        y = y * self.attend(self.statistics(y))
        x = x + self.project(y) * self.beta
        a, b = self.ffn_in(self.norm2(x)).chunk(2, dim=1)
        return x + self.ffn_out(a * b) * self.gamma


class FiLM(nn.Module):
    """Per-channel scale and shift computed from the weather label (Perez et al., AAAI 2018).

    Why FiLM and not a bias alone: a scale lets one label silence a path (haze correction under
    ``rain``) that another label needs. Zero-initialised, so a network warm-started from a blind
    one computes exactly what it did before training moves it."""

    def __init__(self, conditions: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(conditions, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, weather: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(weather).to(x.dtype)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


def _upsampling(cin: int, cout: int, kind: str) -> nn.Sequential:
    """``"shuffle"`` (model 2.0): a 1x1 convolution to ``4 cout`` channels and ``PixelShuffle``,
    which gives each of the four output phases its own filter: the 2- and 4-pixel mesh measured in
    flat skies (docs/weather.md). ``"bilinear"``: a 1x1 convolution at the coarse level, then
    bilinear 2x: every output pixel is the same smooth blend of its neighbours, so a flat input
    stays flat. Both keep the convolution at index 0 (same parameter names)."""
    if kind == "shuffle":
        return nn.Sequential(nn.Conv2d(cin, 4 * cout, 1, bias=False), nn.PixelShuffle(2))
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                         nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))


class PhysicalHead(nn.Module):
    """``J = (I - A (1 - t)) / t + R``: ``t`` from 1/4-scale features, ``A`` from 1/16-scale ones."""

    def __init__(self, t_channels: int, a_channels: int, t_min: float, conditions: int = 0) -> None:
        super().__init__()
        self.t_min = t_min
        # a per-label shift of the transmission's logit: lets ``rain``/``snow`` pin t near 1
        self.t_shift = nn.Linear(conditions, 1) if conditions else None
        if self.t_shift is not None:
            nn.init.zeros_(self.t_shift.weight)
            nn.init.zeros_(self.t_shift.bias)
        self.transmission = nn.Conv2d(t_channels, 1, 1)
        self.airlight = nn.Conv2d(a_channels, 3, 1)
        nn.init.zeros_(self.transmission.weight)
        nn.init.constant_(self.transmission.bias, 4.0)  # t = 0.98: the identity, nearly
        nn.init.zeros_(self.airlight.weight)
        nn.init.constant_(self.airlight.bias, 1.4)  # A = 0.8, a bright grey sky

    def forward(
        self, image: torch.Tensor, residual: torch.Tensor, t_features: torch.Tensor,
        a_features: torch.Tensor, weather: torch.Tensor | None = None,
    ) -> torch.Tensor:
        size = image.shape[-2:]
        t = F.interpolate(self.transmission(t_features).float(), size=size, mode="bilinear",
                          align_corners=False)
        if self.t_shift is not None and weather is not None:
            t = t + self.t_shift(weather.float())[:, :, None, None]
        a = F.interpolate(self.airlight(a_features).float(), size=size, mode="bilinear",
                          align_corners=False)
        t = self.t_min + (1.0 - self.t_min) * torch.sigmoid(t)
        image = image.float()
        return (image - torch.sigmoid(a) * (1.0 - t)) / t + residual.float()


class Refine(nn.Module):
    """Plain 3x3 convolutions at full resolution on the input and the last decoder's features,
    adding to the residual ``R``: capacity where 1-2 pixel rain streaks are.

    Plain convolutions, not more ``GatedBlock``s: at full resolution a block's norms, gates and
    depthwise filters are memory-bound (most of model 3's CPU time), while a dense 3x3
    convolution is compute-bound and runs several times more multiply-adds per second through
    ONNX Runtime (docs/weather.md, pilots). Dilations 1, 2, 4, ... widen the view along a streak
    at no extra cost. The last convolution starts near zero (not at zero, so every layer has a
    gradient from the first step): a warm-started network begins as it was."""

    def __init__(self, features: int, channels: int, layers: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(3 + features, channels, 3, padding=1)]
        for i in range(layers - 2):
            dilation = 2 ** (i % 3)
            convs.append(nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation))
        self.hidden = nn.ModuleList(convs)
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        h = torch.cat([image.to(features.dtype), features], 1)
        for conv in self.hidden:
            h = F.relu(conv(h))
        return self.out(h)


# ------------------------------------------------------------------------- inference-only blocks
def _conv_like(weight: torch.Tensor, bias: torch.Tensor, **kwargs: int) -> nn.Conv2d:
    groups = kwargs.get("groups", 1)
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], weight.shape[-1], **kwargs)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


def _fold_norm(conv: nn.Conv2d, norm: LayerNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv(norm(x))`` acting on the normalised, not yet scaled, ``x``."""
    weight = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[0])
    scale, shift = norm.weight.detach().float(), norm.bias.detach().float()
    return weight * scale[None, :, None, None], bias + weight[:, :, 0, 0] @ shift


class _ChannelStandardize(nn.Module):
    """``LayerNorm2d`` without its affine part (folded into the next convolution), written so that
    ONNX Runtime's blocked (NCHWc) CPU kernels can keep every full-width tensor in their layout.

    Its NCHWc pass only keeps a tensor blocked through ``Conv`` (16k output channels), ``Add``,
    and ``Mul`` of equal shapes; ``Sub``, ``Div``, ``Sqrt`` and any op mixing C channels with one
    send the tensor back to plain NCHW and forth again, which cost more than the convolutions
    (docs/benchmarks.md). So the mean is subtracted as ``x + conv(x, -1/C)`` (C outputs, each the
    negated mean), the variance is taken into ``VARIANCE_CHANNELS`` identical channels (the
    smallest blocked width) with ``eps`` as the bias, only those leave the layout for ``1/sqrt``,
    and a one-hot 1x1 convolution copies the result back to C channels for an equal-shape ``Mul``.
    The same arithmetic as ``LayerNorm2d`` up to float rounding."""

    VARIANCE_CHANNELS = 16

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        k = self.VARIANCE_CHANNELS
        self.register_buffer("negated_mean", torch.full((channels, channels, 1, 1), -1.0 / channels), persistent=False)
        self.register_buffer("average", torch.full((k, channels, 1, 1), 1.0 / channels), persistent=False)
        self.register_buffer("eps", torch.full((k,), float(eps)), persistent=False)
        spread = torch.zeros(channels, k, 1, 1)
        spread[:, 0] = 1.0
        self.register_buffer("spread", spread, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x + F.conv2d(x, self.negated_mean)
        variance = F.conv2d(centred * centred, self.average, self.eps)
        return centred * F.conv2d(torch.reciprocal(torch.sqrt(variance)), self.spread)


class _FusedGatedBlock(nn.Module):
    """A trained ``GatedBlock`` for inference: the norms' scale and shift folded into the 1x1
    convolutions after them, ``beta``/``gamma`` into the ones before them, and each gate's two
    halves computed by two convolutions instead of one convolution and a split (``Slice``)."""

    def __init__(self, block: GatedBlock) -> None:
        super().__init__()
        c = block.project.in_channels
        self.norm1 = _ChannelStandardize(c, block.norm1.eps)
        self.norm2 = _ChannelStandardize(c, block.norm2.eps)
        expand_w, expand_b = _fold_norm(block.expand, block.norm1)
        depth_w, depth_b = block.depthwise.weight.detach().float(), block.depthwise.bias.detach().float()
        ffn_w, ffn_b = _fold_norm(block.ffn_in, block.norm2)
        halves = (slice(0, c), slice(c, 2 * c))
        self.expand = nn.ModuleList(_conv_like(expand_w[h], expand_b[h]) for h in halves)
        self.depthwise = nn.ModuleList(_conv_like(depth_w[h], depth_b[h], padding=1, groups=c) for h in halves)
        self.ffn_in = nn.ModuleList(_conv_like(ffn_w[h], ffn_b[h]) for h in halves)
        self.statistics = block.statistics
        self.attend = block.attend
        beta, gamma = block.beta.detach().float().view(-1), block.gamma.detach().float().view(-1)
        self.project = _conv_like(block.project.weight.detach().float() * beta[:, None, None, None],
                                  block.project.bias.detach().float() * beta)
        self.ffn_out = _conv_like(block.ffn_out.weight.detach().float() * gamma[:, None, None, None],
                                  block.ffn_out.bias.detach().float() * gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm1(x)
        y = self.depthwise[0](self.expand[0](n)) * self.depthwise[1](self.expand[1](n))
        y = y * self.attend(self.statistics(y))
        x = x + self.project(y)
        n = self.norm2(x)
        return x + self.ffn_out(self.ffn_in[0](n) * self.ffn_in[1](n))


class _BlockedCopy(nn.Module):
    """A 1x1 convolution by the identity. After a ``PixelShuffle`` (``DepthToSpace``, which ONNX
    Runtime's blocked NCHWc layout lacks) it is where the upsampled map re-enters that layout, so
    the skip connection's ``Add`` and the decoder blocks after it stay blocked; without it every
    residual ``Add`` of the decoder goes through plain NCHW and back."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("identity", torch.eye(channels)[:, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.identity)


class _BlockedFiLM(nn.Module):
    """A trained ``FiLM`` followed by a ``_BlockedCopy``. Its scale and shift are per sample
    (computed from the label), a broadcast ``Mul``/``Add`` that ONNX Runtime's blocked layout
    lacks; without the copy the residual stream of the whole stage after it stays in plain NCHW,
    and every block's convolutions convert in and out (41% of model 3's CPU time, against 2 extra
    1x1 convolutions per stage with it; docs/benchmarks.md)."""

    def __init__(self, film: FiLM, channels: int) -> None:
        super().__init__()
        self.film = film
        self.copy = _BlockedCopy(channels)

    def forward(self, x: torch.Tensor, weather: torch.Tensor) -> torch.Tensor:
        return self.copy(self.film(x, weather))


def is_fused(model: nn.Module) -> bool:
    """Whether ``model`` is a WeatherNet made by ``fuse_for_inference`` (inference only)."""
    return isinstance(model, WeatherNet) and any(isinstance(m, (_FusedGatedBlock, _BlockedCopy)) for m in model.modules())


def fuse_for_inference(model: WeatherNet) -> WeatherNet:
    """A float32 copy of ``model`` that computes the same function (to float rounding) with fewer
    and cheaper ONNX nodes: every ``GatedBlock`` becomes a ``_FusedGatedBlock``, and every
    upsampling and every ``FiLM`` ends in a ``_BlockedCopy``. For export; it cannot be trained (the
    norms' and gates' parameters are folded away)."""
    if is_fused(model):
        raise ValueError("the network is already fused for inference")
    fused = copy.deepcopy(model).float().eval()
    for up in fused.ups:
        shuffled = isinstance(up[1], nn.PixelShuffle)
        up.append(_BlockedCopy(up[0].out_channels // 4 if shuffled else up[0].out_channels))
    for films in (fused.encoder_film, fused.decoder_film):
        for i, film in enumerate(films or ()):
            films[i] = _BlockedFiLM(film, film.linear.out_features // 2)
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GatedBlock):
                setattr(parent, name, _FusedGatedBlock(child))
    return fused


# ----------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class WeatherNetConfig:
    """Channels ``width * 2**level`` (at most ``max_channels``); blocks per level; attention; head."""

    width: int = 16
    max_channels: int = 96
    encoder_blocks: tuple[int, ...] = (0, 1, 2, 4)
    middle_blocks: int = 6
    decoder_blocks: tuple[int, ...] = (0, 1, 1, 2)
    attention: str = "dct"
    window: int = 7
    head: str = "physical"
    t_min: float = 0.1
    conditions: int = 0  # 0: blind (model 2.0); len(WEATHER_LABELS): takes the weather as input
    upsample: str = "shuffle"  # or "bilinear" (no sub-pixel mesh; model 3)
    refine: int = 0  # channels of the plain-convolution stage at full resolution (0: none; see Refine)
    refine_layers: int = 4

    def __post_init__(self) -> None:
        if len(self.encoder_blocks) != LEVELS or len(self.decoder_blocks) != LEVELS:
            raise ValueError(f"encoder_blocks and decoder_blocks need {LEVELS} entries")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}")
        if self.width < 8 or self.width % 8:
            raise ValueError("width must be a multiple of 8")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}")
        if self.conditions not in (0, len(WEATHER_LABELS)):
            raise ValueError(f"conditions must be 0 (blind) or {len(WEATHER_LABELS)}")
        if self.refine < 0 or (self.refine and self.refine_layers < 2):
            raise ValueError("refine needs channels >= 0 and at least 2 layers")

    def channels(self, level: int) -> int:
        return min(self.width * 2**level, self.max_channels)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> "WeatherNetConfig":
        fields = dict(values)
        for key in ("encoder_blocks", "decoder_blocks"):
            if key in fields:
                fields[key] = tuple(fields[key])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]


def feature_channels(config: WeatherNetConfig) -> tuple[int, int, int, int]:
    """Channels of the four maps ``forward_features`` returns."""
    return (config.channels(2), config.channels(3), config.channels(LEVELS), config.channels(LEVELS))


def _stage(channels: int, count: int, config: WeatherNetConfig) -> nn.Sequential:
    return nn.Sequential(*(GatedBlock(channels, config.attention, config.window) for _ in range(count)))


class WeatherNet(nn.Module):
    """RGB in ``[0, 1]`` (sides multiples of ``MULTIPLE``) -> restored RGB (not clamped)."""

    def __init__(self, config: WeatherNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WeatherNetConfig()
        c = config.channels
        self.intro = nn.Conv2d(3, c(0), 3, padding=1)
        self.encoders = nn.ModuleList(_stage(c(i), n, config) for i, n in enumerate(config.encoder_blocks))
        self.downs = nn.ModuleList(nn.Conv2d(c(i), c(i + 1), 2, stride=2) for i in range(LEVELS))
        self.middle = _stage(c(LEVELS), config.middle_blocks, config)
        self.ups = nn.ModuleList(_upsampling(c(i + 1), c(i), config.upsample) for i in range(LEVELS))
        self.decoders = nn.ModuleList(_stage(c(i), n, config) for i, n in enumerate(config.decoder_blocks))
        self.ending = nn.Conv2d(c(0), 3, 3, padding=1)
        nn.init.zeros_(self.ending.weight)
        nn.init.zeros_(self.ending.bias)
        self.refine = Refine(c(0), config.refine, config.refine_layers) if config.refine else None
        self.physical = (PhysicalHead(c(2), c(LEVELS), config.t_min, config.conditions)
                         if config.head == "physical" else None)
        k = config.conditions
        # FiLM where each stage begins: encoders 0..3, the middle (index 4), decoders 0..3
        self.encoder_film = nn.ModuleList(FiLM(k, c(i)) for i in range(LEVELS + 1)) if k else None
        self.decoder_film = nn.ModuleList(FiLM(k, c(i)) for i in range(LEVELS)) if k else None

    def forward(self, x: torch.Tensor, weather: torch.Tensor | None = None) -> torch.Tensor:
        """``weather``: ``(N, 4)`` one-hot rows in the order of ``WEATHER_LABELS`` (conditioned
        networks only; ``None`` means ``unknown``)."""
        return self.forward_features(x, weather)[0]

    def _weather(self, x: torch.Tensor, weather: torch.Tensor | None) -> torch.Tensor | None:
        if not self.config.conditions:
            if weather is not None:
                raise ValueError("this network is blind: it takes no weather input")
            return None
        if weather is None:
            weather = weather_onehot(["unknown"]).to(x.device).expand(x.shape[0], -1)
        return weather.float()

    def _film(self, films: nn.ModuleList | None, level: int, h: torch.Tensor,
              weather: torch.Tensor | None) -> torch.Tensor:
        return h if films is None or weather is None else films[level](h, weather)

    def forward_features(
        self, x: torch.Tensor, weather: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output and the four maps CKT distils (a method of its own, not a flag of
        ``forward``: the ONNX exporter turns a flag into a traced tensor)."""
        weather = self._weather(x, weather)
        h = self.intro(x)
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            h = encoder(self._film(self.encoder_film, level, h, weather))
            skips.append(h)
            h = down(h)
        features = [skips[2], skips[3], h]
        h = self.middle(self._film(self.encoder_film, LEVELS, h, weather))
        features.append(h)
        airlight_features = h
        t_features = h
        for level in reversed(range(LEVELS)):
            h = self._film(self.decoder_film, level, self.ups[level](h) + skips[level], weather)
            h = self.decoders[level](h)
            if level == 2:
                t_features = h
        residual = self.ending(h)
        if self.refine is not None:
            residual = residual + self.refine(x, h)
        if self.physical is None:
            out = x + residual
        else:
            out = self.physical(x, residual, t_features, airlight_features, weather)
        return out, features


# ------------------------------------------------------------------------------------ warm start
def adapt_state_dict(
    state: dict[str, torch.Tensor], source: WeatherNetConfig, target: WeatherNetConfig,
) -> dict[str, torch.Tensor]:
    """A ``source`` network's weights for a ``target`` that only adds to it, so a new design
    starts from a trained one instead of from nothing (CPU hours are the scarce resource).

    Allowed differences: more blocks per stage (the new ones follow the old, and a new
    ``GatedBlock`` is the identity), FiLM conditioning (zero-initialised: the identity) and
    ``shuffle`` -> ``bilinear`` upsampling, whose 1x1 convolution takes the mean of the four
    sub-pixel filters (the smooth part of what the shuffle computed). Load the result with
    ``strict=False``; the keys it lacks are exactly the target's new modules."""
    for name in ("width", "max_channels", "attention", "window", "head", "t_min"):
        if getattr(source, name) != getattr(target, name):
            raise ValueError(f"cannot warm-start across a different {name}")
    for a, b in ((source.encoder_blocks, target.encoder_blocks), (source.decoder_blocks, target.decoder_blocks)):
        if any(t < s for s, t in zip(a, b)):
            raise ValueError("the target may add blocks, not remove them")
    if target.middle_blocks < source.middle_blocks:
        raise ValueError("the target may add blocks, not remove them")
    out = dict(state)
    if source.upsample == "shuffle" and target.upsample == "bilinear":
        for level in range(LEVELS):
            key = f"ups.{level}.0.weight"
            weight = out[key]
            out[key] = weight.reshape(weight.shape[0] // 4, 4, *weight.shape[1:]).mean(1)
    elif source.upsample != target.upsample:
        raise ValueError(f"cannot warm-start {source.upsample} -> {target.upsample} upsampling")
    return out


# --------------------------------------------------------------------------------------- builder
def build_weathernet(**overrides: object) -> WeatherNet:
    """A WeatherNet from ``WeatherNetConfig`` fields (defaults for the rest)."""
    return WeatherNet(WeatherNetConfig.from_dict(dict(overrides)))
