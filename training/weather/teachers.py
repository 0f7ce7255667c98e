"""The single-weather teachers: which file is which network, and how to run one.

``models/teachers/`` holds the architectures (no I/O); this module reads the released weights
(``../shared/weights/teachers/``, training only, never served or committed) and wraps each
network so that every teacher takes and returns RGB in ``[0, 1]`` as the student does.

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
from torch import nn

from export.weather import load_student
from models.teachers.prenet import PReNet

__all__ = ["TEACHERS", "Teacher", "load_teacher", "teacher_path", "DEFAULT_ROOT"]

DEFAULT_ROOT = Path("../shared/weights/teachers")
REPOSITORY = Path(__file__).resolve().parents[2]


class _Clamped(nn.Module):
    """A teacher whose output is clamped to ``[0, 1]``, as its authors' test scripts do."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image).clamp(0, 1)


def _prenet(path: Path) -> nn.Module:
    network = PReNet()
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _Clamped(network)


def _our_student(path: Path) -> nn.Module:
    student, _ = load_student(path)
    return _Clamped(student)


class Teacher(NamedTuple):
    weather: str
    file: str  # under the teachers' root, or under the repository where ``ours``
    load: Callable[[Path], nn.Module]
    ours: bool = False


TEACHERS: dict[str, Teacher] = {
    "prenet-rain100h": Teacher("rain", "prenet/PReNet6-Rain100H.pth", _prenet),
    "prenet-rain100l": Teacher("rain", "prenet/PReNet6-Rain100L.pth", _prenet),
    "prenet-rain1400": Teacher("rain", "prenet/PReNet6-Rain1400.pth", _prenet),
    "student-2.0": Teacher("haze", "resume/weather/student-stage2.pt", _our_student, ours=True),
}


def teacher_path(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Where the named teacher's weights are (public ones under ``root``, ours in the repository)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    teacher = TEACHERS[name]
    return (REPOSITORY if teacher.ours else root) / teacher.file


def load_teacher(name: str, root: Path = DEFAULT_ROOT) -> nn.Module:
    """The named teacher, in eval mode with gradients off."""
    return TEACHERS[name].load(teacher_path(name, root)).eval().requires_grad_(False)
