"""models/dncnn.py: shapes, the residual formulation, depth and parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.dncnn import DNCNN_CONFIGS, DnCNN, build_dncnn, dncnn_config


def _param_count(channels: int, depth: int, features: int, batch_norm: bool) -> int:
    head = channels * features * 9 + features
    middle = features * features * 9 + (2 * features if batch_norm else features)
    tail = features * channels * 9 + channels
    return head + (depth - 2) * middle + tail


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("name", sorted(DNCNN_CONFIGS))
def test_shape_depth_params_no_nan(name: str, batch_norm: bool) -> None:
    cfg = dncnn_config(name)
    model = build_dncnn(name, batch_norm=batch_norm).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == cfg.depth
    assert len(norms) == (cfg.depth - 2 if batch_norm else 0)
    assert sum(p.numel() for p in model.parameters()) == _param_count(
        cfg.channels, cfg.depth, cfg.features, batch_norm
    )
    assert model.receptive_radius == cfg.depth
    x = torch.rand(2, cfg.channels, 11, 7)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_paper_depths() -> None:
    assert dncnn_config("dncnn-s").depth == 17
    assert dncnn_config("dncnn-b").depth == 20
    assert dncnn_config("cdncnn-b").channels == 3
    # 17-layer DnCNN-S without BN, as released: the count the converter must fill exactly.
    assert sum(p.numel() for p in build_dncnn("dncnn-s", batch_norm=False).parameters()) == 555_137


@pytest.mark.parametrize("batch_norm", [True, False])
def test_zero_last_conv_is_identity(batch_norm: bool) -> None:
    model = DnCNN(channels=3, depth=5, features=8, batch_norm=batch_norm).eval()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    x = torch.rand(1, 3, 9, 13)
    with torch.inference_mode():
        assert torch.equal(model(x), x)


def test_predicts_noise() -> None:
    """output = input - net(input): a constant tail bias b shifts the output by -b."""
    model = DnCNN(channels=1, depth=3, features=4, batch_norm=False).eval()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.fill_(0.25)
    x = torch.rand(1, 1, 5, 5)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), x - 0.25)


def test_bad_arguments_fail_loudly() -> None:
    with pytest.raises(ValueError):
        DnCNN(depth=2)
    with pytest.raises(KeyError, match="known"):
        dncnn_config("dncnn-x")
