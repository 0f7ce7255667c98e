"""models/teachers/: each architecture has its released file's parameters, loads that file's
shapes (where ../shared is present), and keeps the image size."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn

from models.teachers import aodnet, gcanet, prenet, umrl
from tests.conftest import SHARED, needs_shared

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = SHARED / "weights" / "teachers"
# module, constructor, released file, input channels, input sides (multiples of the network's)
CASES = {
    "prenet": (prenet, prenet.PReNet, "prenet/PReNet6-Rain100H.pth", 3, (20, 28)),
    "umrl": (umrl, umrl.UMRL, "umrl/Net_DIDMDN.pth", 3, (32, 48)),
    "gcanet": (gcanet, gcanet.GCANet, "gcanet/wacv_gcanet_dehaze.pth", 4, (20, 28)),
    "aodnet": (aodnet, aodnet.AODNet, "aodnet/dehazer.pth", 3, (19, 27)),
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", CASES)
def test_parameter_count_is_the_released_files(name: str) -> None:
    module, build, *_ = CASES[name]
    assert isinstance(module, ModuleType)
    assert _count(build()) == module.PARAMETERS


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("name", CASES)
def test_released_file_loads_with_its_shapes(name: str) -> None:
    module, build, file, *_ = CASES[name]
    state = torch.load(WEIGHTS / file, map_location="cpu", weights_only=True)
    model = build()
    own = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in own.items()}
    model.load_state_dict(state)  # strict
    learnable = sum(v.numel() for k, v in state.items() if "running_" not in k and "num_batches" not in k)
    assert learnable == module.PARAMETERS


@pytest.mark.parametrize("name", CASES)
def test_output_keeps_the_size(name: str) -> None:
    _, build, _, channels, (h, w) = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        y = model(torch.rand(2, channels, h, w))
    assert y.shape == (2, 3, h, w)
    assert bool(torch.isfinite(y).all())


def test_umrl_needs_multiples_of_16() -> None:
    """MULTIPLE is the contract the wrapper pads to: an 8-px side cannot reach 1/16 scale."""
    model = umrl.UMRL().eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        model(torch.rand(1, 3, umrl.MULTIPLE // 2, umrl.MULTIPLE))


def test_gcanet_smoothing_starts_as_the_identity() -> None:
    """The shared separable convolution is initialised to a centred delta (the paper's choice)."""
    smooth = gcanet.SharedSeparableConv(7)
    x = torch.rand(1, 5, 9, 11)
    assert torch.equal(smooth(x), x)


def test_aodnet_is_the_papers_formula() -> None:
    """J = K * I - K + 1 (ReLU): with every weight and bias zero, K = 0 and J = 1 everywhere."""
    model = aodnet.AODNet()
    for p in model.parameters():
        nn.init.zeros_(p)
    assert torch.equal(model(torch.rand(1, 3, 5, 7)), torch.ones(1, 3, 5, 7))
