"""The public single-weather teachers: which file is which network, and how to run one.

``models/teachers/`` holds the architectures (no I/O); this module reads the released weights
(``../shared/weights/teachers/``, training only, never served or committed) and wraps each
network so that every teacher takes and returns RGB in ``[0, 1]`` as the student does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.teachers.prenet import PReNet

__all__ = ["TEACHERS", "load_teacher", "DEFAULT_ROOT"]

DEFAULT_ROOT = Path("../shared/weights/teachers")


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


#: name -> (weather, file under the teachers' root, loader)
TEACHERS: dict[str, tuple[str, str, Callable[[Path], nn.Module]]] = {
    "prenet-rain100h": ("rain", "prenet/PReNet6-Rain100H.pth", _prenet),
    "prenet-rain100l": ("rain", "prenet/PReNet6-Rain100L.pth", _prenet),
    "prenet-rain1400": ("rain", "prenet/PReNet6-Rain1400.pth", _prenet),
}


def load_teacher(name: str, root: Path = DEFAULT_ROOT) -> nn.Module:
    """The named teacher, in eval mode with gradients off."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    _, file, loader = TEACHERS[name]
    return loader(root / file).eval().requires_grad_(False)
