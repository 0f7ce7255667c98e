"""The public single-weather teachers: which file is which network, and how to run one.

``models/teachers/`` holds the architectures (no I/O); this module reads the released weights
(``../shared/weights/teachers/``, training only, never served or committed) and wraps each
network so that every teacher takes and returns RGB in ``[0, 1]`` as the student does, at any
size: the wrapper pads by reflection to the network's size multiple, converts to and from the
authors' conventions (read from their test scripts), crops and clamps.

Conventions, per family:

* PReNet (Ren et al.): RGB in ``[0, 1]``, output clamped (the authors' ``test_PReNet.py``).
* UMRL (Yasarla & Patel): RGB in ``[-1, 1]``, sides multiples of 16. The authors' ``umrl_test.py``
  runs the network in training mode (BatchNorm on each image's own statistics) and stretches each
  output to its own min..max; here BatchNorm uses each image's statistics (one image at a time, so
  a batch of crops does not mix) and the output is mapped back linearly, ``(y + 1) / 2``. Measured
  on our rain over 6 BSDS500 *train* photos: +1.61 dB so; the stored running averages +1.38;
  the min..max stretch +0.93 (``docs/weather-teachers.md``).
* GCANet (Chen et al.): RGB in ``[0, 255]`` plus an edge map (``edge_map``), all minus 128; the
  dehazing model predicts the residual added to the ``[0, 255]`` input (the authors' ``test.py``,
  which resizes to multiples of 4 where this pads).
* AOD-Net (Li et al.): RGB in ``[0, 1]``, output clamped (``dehaze.py`` saves through
  ``torchvision.utils.save_image``, which clamps).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.teachers.aodnet import AODNet
from models.teachers.gcanet import MULTIPLE as GCANET_MULTIPLE
from models.teachers.gcanet import GCANet
from models.teachers.prenet import PReNet
from models.teachers.umrl import MULTIPLE as UMRL_MULTIPLE
from models.teachers.umrl import UMRL

__all__ = ["TEACHERS", "load_teacher", "teachers_of", "edge_map", "DEFAULT_ROOT"]

DEFAULT_ROOT = Path("../shared/weights/teachers")


class _Teacher(nn.Module):
    """RGB ``[0, 1]`` in and out, any size: reflect-pads to ``multiple``, runs ``restore``, crops,
    clamps to ``[0, 1]`` (as the authors' test scripts clamp or round to 8 bit)."""

    multiple = 1

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        m = self.multiple
        x = F.pad(image, (0, -w % m, 0, -h % m), mode="reflect") if h % m or w % m else image
        return self.restore(x)[..., :h, :w].clamp(0, 1)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class _UMRLTeacher(_Teacher):
    """UMRL in ``[-1, 1]``, one image at a time: its BatchNorms use each image's own statistics."""

    multiple = UMRL_MULTIPLE

    def __init__(self, network: nn.Module) -> None:
        super().__init__(network)
        for module in network.modules():  # BatchNorm on the batch's statistics, in eval mode too
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean = module.running_var = None

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(self.network(image[None] * 2 - 1) + 1) / 2 for image in x])


def edge_map(rgb255: torch.Tensor) -> torch.Tensor:
    """GCANet's fourth input channel: for each pixel, the absolute differences to its four
    neighbours (missing ones count 0), summed, averaged over the channels and divided by 4.
    ``rgb255``: (N, 3, H, W) in ``[0, 255]``; returns (N, 1, H, W)."""
    dx = (rgb255[..., :, 1:] - rgb255[..., :, :-1]).abs()
    dy = (rgb255[..., 1:, :] - rgb255[..., :-1, :]).abs()
    total = F.pad(dx, (1, 0)) + F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 1, 0)) + F.pad(dy, (0, 0, 0, 1))
    return total.mean(1, keepdim=True) / 4


class _GCANetTeacher(_Teacher):
    """GCANet on ``[0, 255]`` RGB + edges minus 128; the dehazing model's output is a residual."""

    multiple = GCANET_MULTIPLE

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * 255
        return (rgb + self.network(torch.cat((rgb, edge_map(rgb)), 1) - 128)) / 255


def _loader(build: Callable[[], nn.Module], wrap: type[_Teacher] = _Teacher) -> Callable[[Path], nn.Module]:
    """A loader: the architecture, the released state dict loaded strictly, the family's wrapper."""

    def load(path: Path) -> nn.Module:
        network = build()
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return wrap(network)

    return load


#: name -> (weather, file under the teachers' root, loader)
TEACHERS: dict[str, tuple[str, str, Callable[[Path], nn.Module]]] = {
    "prenet-rain100h": ("rain", "prenet/PReNet6-Rain100H.pth", _loader(PReNet)),
    "prenet-rain100l": ("rain", "prenet/PReNet6-Rain100L.pth", _loader(PReNet)),
    "prenet-rain1400": ("rain", "prenet/PReNet6-Rain1400.pth", _loader(PReNet)),
    "umrl-didmdn": ("rain", "umrl/Net_DIDMDN.pth", _loader(UMRL, _UMRLTeacher)),
    "gcanet-its": ("haze", "gcanet/wacv_gcanet_dehaze.pth", _loader(GCANet, _GCANetTeacher)),
    "aodnet": ("haze", "aodnet/dehazer.pth", _loader(AODNet)),
}


def teachers_of(weather: str) -> list[str]:
    """The registered teachers of ``weather``, in registry order."""
    return [name for name, (w, _, _) in TEACHERS.items() if w == weather]


def load_teacher(name: str, root: Path = DEFAULT_ROOT) -> nn.Module:
    """The named teacher, in eval mode with gradients off."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    _, file, loader = TEACHERS[name]
    return loader(root / file).eval().requires_grad_(False)
