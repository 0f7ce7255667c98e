"""models/msbdn.py: the paper's size, shapes, the distilled features, width scaling."""

from __future__ import annotations

import pytest
import torch

from models.msbdn import MSBDN, MULTIPLE, MSBDNConfig, build_msbdn, feature_channels

TINY = MSBDNConfig(width=0.125, res_blocks=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tiny() -> MSBDN:
    torch.manual_seed(0)
    return MSBDN(TINY).eval()


def test_full_width_has_the_papers_parameter_count() -> None:
    model = MSBDN()  # built, never run: 28.7 M parameters is too much for a CPU test
    assert model.config == MSBDNConfig(width=1.0, res_blocks=18)
    assert _parameters(model) == 28_712_861
    assert feature_channels(model.config) == (64, 128, 256, 256)


def test_build_msbdn_matches_the_config() -> None:
    model = build_msbdn(width=0.125, res_blocks=1)
    assert model.config == TINY
    assert _parameters(model) == _parameters(MSBDN(TINY))


@pytest.mark.parametrize("size", [(32, 32), (32, 96), (64, 32)])
def test_output_has_the_input_shape(tiny: MSBDN, size: tuple[int, int]) -> None:
    assert all(side % MULTIPLE == 0 for side in size)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = tiny(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert bool(torch.isfinite(y).all())


def test_the_smallest_accepted_side_is_one_multiple(tiny: MSBDN) -> None:
    """MULTIPLE (32) is the contract the service pads to: a 16-px side fails in the bottleneck."""
    with torch.no_grad():
        assert tiny(torch.rand(1, 3, MULTIPLE, MULTIPLE)).shape == (1, 3, MULTIPLE, MULTIPLE)
        with pytest.raises(RuntimeError):
            tiny(torch.rand(1, 3, MULTIPLE // 2, MULTIPLE))


def test_return_features_gives_the_four_distilled_maps(tiny: MSBDN) -> None:
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        out, features = tiny(x, return_features=True)
        plain = tiny(x)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert len(features) == 4
    channels = feature_channels(TINY)
    assert channels == (4 * TINY.base, 8 * TINY.base, 16 * TINY.base, 16 * TINY.base)
    for feature, c, scale in zip(features, channels, (4, 8, 16, 16)):
        assert feature.shape == (2, c, 32 // scale, 48 // scale)


def test_parameters_shrink_with_the_square_of_the_width() -> None:
    counts = {w: _parameters(MSBDN(MSBDNConfig(width=w, res_blocks=1))) for w in (0.125, 0.25, 0.5)}
    for narrow, wide in ((0.125, 0.25), (0.25, 0.5)):
        assert 3.8 < counts[wide] / counts[narrow] < 4.0  # biases and PReLUs grow only linearly


def test_res_blocks_set_the_bottleneck_depth() -> None:
    one, three = (MSBDN(MSBDNConfig(width=0.125, res_blocks=n)) for n in (1, 3))
    assert len(one.bottleneck) == 1 and len(three.bottleneck) == 3
    block = _parameters(one.bottleneck[0])
    assert _parameters(three) - _parameters(one) == 2 * block


@pytest.mark.parametrize("width", [1 / 16, 3 / 16, 0.0])
def test_odd_or_too_few_base_channels_are_refused(width: float) -> None:
    with pytest.raises(ValueError, match="base channels"):
        MSBDN(MSBDNConfig(width=width, res_blocks=1))
    with pytest.raises(ValueError, match="base channels"):
        feature_channels(MSBDNConfig(width=width))
