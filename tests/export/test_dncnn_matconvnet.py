"""export/dncnn_matconvnet.py: MatConvNet layout handling, and agreement with KAIR's conversion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from export.dncnn import RELEASES, DnCNNRelease, check_against_kair, load_release
from export.dncnn_matconvnet import ConvLayer, kair_to_state_dict, load_matconvnet_layers, matconvnet_to_state_dict
from models.dncnn import DnCNN, dncnn_config

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WEIGHTS = SHARED / "weights" / "dncnn"
needs_shared = pytest.mark.skipif(not WEIGHTS.is_dir(), reason="../shared/weights/dncnn absent")


def _layer(c_out: int, c_in: int, seed: int) -> ConvLayer:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)  # (Cout, Cin, W, H)
    if c_out == 1:
        weight = weight[0]  # MATLAB drops the leading singleton
    return ConvLayer(weight, rng.standard_normal((1, c_out)).astype(np.float32), (1, 1, 1, 1), (1, 1))


def test_layout_transpose_and_singleton() -> None:
    layers = [_layer(4, 1, 0), _layer(4, 4, 1), _layer(1, 4, 2)]
    state = matconvnet_to_state_dict(layers)
    model = DnCNN(channels=1, depth=3, features=4, batch_norm=False)
    model.load_state_dict(state, strict=True)
    # PyTorch [o, i, h, w] is h5py's [o, i, w, h].
    np.testing.assert_array_equal(state["head.conv.weight"][2, 0, 0, 1], layers[0].weight[2, 0, 1, 0])
    assert state["tail.weight"].shape == (1, 4, 3, 3)
    np.testing.assert_array_equal(state["tail.weight"][0, 3, 2, 0], layers[2].weight[3, 0, 2])
    assert state["tail.bias"].shape == (1,)


def test_rejects_what_dncnn_cannot_hold() -> None:
    bad_pad = dataclasses.replace(_layer(4, 4, 1), pad=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="pad"):
        matconvnet_to_state_dict([_layer(4, 1, 0), bad_pad, _layer(1, 4, 2)])
    with pytest.raises(ValueError, match="input channels"):
        matconvnet_to_state_dict([_layer(4, 1, 0), _layer(4, 5, 1), _layer(1, 4, 2)])


def test_kair_renaming() -> None:
    kair = {f"model.{2 * i}.{p}": torch.full((1,), float(i)) for i in range(3) for p in ("weight", "bias")}
    state = kair_to_state_dict(kair)
    assert list(state) == [
        "head.conv.weight", "head.conv.bias", "body.0.conv.weight", "body.0.conv.bias",
        "tail.weight", "tail.bias",
    ]
    assert float(state["tail.bias"]) == 2.0


@pytest.mark.shared
@needs_shared
def test_sigma25_matches_kair() -> None:
    release = next(r for r in RELEASES if r.name == "dncnn-gray-s25")
    model = load_release(release, WEIGHTS)
    weight_diff, output_diff = check_against_kair(model, WEIGHTS / "kair" / "dncnn_25.pth")
    assert weight_diff == 0.0
    assert output_diff <= 1e-6


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
def test_release_depths(release: DnCNNRelease) -> None:
    layers = load_matconvnet_layers(WEIGHTS / release.source)
    cfg = dncnn_config(release.config)
    assert len(layers) == cfg.depth
    assert layers[0].weight.shape[1] == cfg.channels
