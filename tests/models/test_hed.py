"""models/hed.py: output layout and range, any input size, pre-processing, size and receptive field."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.hed import HED_CONFIGS, HED_MEAN_BGR, OUTPUT_NAMES, HEDForInference, build_hed, hed_config


def _random_tiny(seed: int = 0) -> HEDForInference:
    torch.manual_seed(seed)
    model = build_hed("hed-tiny")
    for param in model.parameters():
        nn.init.normal_(param, std=0.3)
    return HEDForInference(model).eval()


def test_vgg16_hed_size_and_layout() -> None:
    model = build_hed("hed-vgg16")
    # VGG16 conv1_1..conv5_3 (14,714,688) + five side convs (1,473) + the fusion (6).
    assert sum(p.numel() for p in model.parameters()) == 14_716_171
    convs = [m for m in model.stages.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.ceil_mode for p in pools)  # no pool5
    assert model.multiple == 16
    assert model.receptive_radius == 113
    assert OUTPUT_NAMES == ("fuse", "side1", "side2", "side3", "side4", "side5")


@pytest.mark.parametrize("size", [(37, 53), (32, 48), (1, 1), (5, 17), (16, 33)])
def test_any_size_six_probabilities(size: tuple[int, int]) -> None:
    model = _random_tiny()
    x = torch.rand(2, 3, *size)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 6, *size)
    assert torch.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_full_model_runs_at_an_odd_size() -> None:
    with torch.inference_mode():
        y = HEDForInference(build_hed().eval())(torch.rand(1, 3, 21, 35))
    assert y.shape == (1, 6, 21, 35)
    assert ((y >= 0) & (y <= 1)).all()


def test_preprocessing_rgb_unit_to_caffe_bgr() -> None:
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 3)
    out = HEDForInference.preprocess(rgb)
    expected = torch.tensor(
        [0.0 * 255 - HED_MEAN_BGR[0], 0.5 * 255 - HED_MEAN_BGR[1], 1.0 * 255 - HED_MEAN_BGR[2]]
    )
    assert out.shape == (1, 3, 2, 3)
    torch.testing.assert_close(out[0, :, 1, 2], expected, rtol=0, atol=1e-5)
    assert HED_MEAN_BGR == (104.00699, 116.66877, 122.67892)


def test_wrapper_is_sigmoid_of_logits_on_preprocessed_input() -> None:
    model = _random_tiny(1)
    x = torch.rand(1, 3, 24, 40)
    with torch.inference_mode():
        expected = torch.sigmoid(model.hed(HEDForInference.preprocess(x)))
        torch.testing.assert_close(model(x), expected)


def test_fused_channel_is_the_fusion_of_the_sides() -> None:
    model = _random_tiny(2)
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        logits = model.hed(HEDForInference.preprocess(x))
        torch.testing.assert_close(logits[:, :1], model.hed.fuse(logits[:, 1:]))


def test_receptive_radius_is_exact_on_aligned_input() -> None:
    """A pixel change reaches exactly ``receptive_radius`` pixels (inputs a multiple of 16)."""
    model = _random_tiny(3).hed
    x = torch.randn(1, 3, 288, 288)
    reach = 0
    with torch.inference_mode():
        base = model(x)
        for offset in range(16):  # every position within one 16-pixel cell
            c = 128 + offset
            bumped = x.clone()
            bumped[..., c, c] += 10.0
            changed = torch.nonzero((model(bumped) - base).abs().amax(dim=(0, 1)) > 0)
            reach = max(reach, int((changed[:, 0] - c).abs().max()), int((changed[:, 1] - c).abs().max()))
    assert reach == model.receptive_radius == 113


def test_configs() -> None:
    assert set(HED_CONFIGS) == {"hed-vgg16", "hed-tiny"}
    with pytest.raises(KeyError, match="known: hed-tiny, hed-vgg16"):
        hed_config("hed-resnet")
    with pytest.raises(ValueError):
        build_hed(type(hed_config("hed-tiny"))(widths=(4,), depths=(1, 2)))
