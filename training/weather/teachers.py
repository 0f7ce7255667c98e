"""The single-weather teachers: which file is which network, and how to run one.

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

One teacher is our own: the blind student 2.0 (``resume/weather/student-stage2.pt``, the
campaign's warm start) for haze. Model 3 lost haze to the first, fast steps of its campaign
(whole validation photos 19.2 dB at step 500, 18.4 at 12500; 2.0: 18.8) and, on the pool's own
haze pairs, scores below 2.0 (19.28 against 19.76 dB): its outputs are a reachable target that
keeps what the warm start knew while the other weathers improve.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from export.weather import load_student
from models.teachers.aodnet import AODNet
from models.teachers.gcanet import MULTIPLE as GCANET_MULTIPLE
from models.teachers.gcanet import GCANet
from models.teachers.prenet import PReNet
from models.teachers.umrl import MULTIPLE as UMRL_MULTIPLE
from models.teachers.umrl import UMRL
from models.weathernet import MULTIPLE as WEATHERNET_MULTIPLE

__all__ = ["TEACHERS", "Teacher", "load_teacher", "teacher_path", "teachers_of", "edge_map", "DEFAULT_ROOT"]

DEFAULT_ROOT = Path("../shared/weights/teachers")
REPOSITORY = Path(__file__).resolve().parents[2]


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


class _StudentTeacher(_Teacher):
    """One of our own (blind) students: sides multiples of its four downsamplings."""

    multiple = WEATHERNET_MULTIPLE


def _our_student(path: Path) -> nn.Module:
    student, _ = load_student(path)
    return _StudentTeacher(student)


class Teacher(NamedTuple):
    weather: str
    file: str  # under the teachers' root, or under the repository where ``ours``
    load: Callable[[Path], nn.Module]
    ours: bool = False


TEACHERS: dict[str, Teacher] = {
    "prenet-rain100h": Teacher("rain", "prenet/PReNet6-Rain100H.pth", _loader(PReNet)),
    "prenet-rain100l": Teacher("rain", "prenet/PReNet6-Rain100L.pth", _loader(PReNet)),
    "prenet-rain1400": Teacher("rain", "prenet/PReNet6-Rain1400.pth", _loader(PReNet)),
    "umrl-didmdn": Teacher("rain", "umrl/Net_DIDMDN.pth", _loader(UMRL, _UMRLTeacher)),
    "gcanet-its": Teacher("haze", "gcanet/wacv_gcanet_dehaze.pth", _loader(GCANet, _GCANetTeacher)),
    "aodnet": Teacher("haze", "aodnet/dehazer.pth", _loader(AODNet)),
    "student-2.0": Teacher("haze", "resume/weather/student-stage2.pt", _our_student, ours=True),
}


def teachers_of(weather: str) -> list[str]:
    """The registered teachers of ``weather``, in registry order."""
    return [name for name, teacher in TEACHERS.items() if teacher.weather == weather]


def teacher_path(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Where the named teacher's weights are (public ones under ``root``, ours in the repository)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    teacher = TEACHERS[name]
    return (REPOSITORY if teacher.ours else root) / teacher.file


def load_teacher(name: str, root: Path = DEFAULT_ROOT) -> nn.Module:
    """The named teacher, in eval mode with gradients off."""
    path = teacher_path(name, root)  # an unknown name fails here, with the known ones
    return TEACHERS[name].load(path).eval().requires_grad_(False)
