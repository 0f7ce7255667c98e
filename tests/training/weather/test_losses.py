"""training/weather/losses.py: the frozen feature network, SCR/HCR ratios and their gradients, CKT."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from models.hed import HED, HEDForInference
from training.weather.losses import (
    CR_WEIGHTS,
    EPS,
    CKTLoss,
    HCRLoss,
    SCRLoss,
    VGGFeatures,
    contrastive_ratio,
)

WIDTHS = (4, 8, 8, 8, 8)
DEPTHS = (2, 2, 3, 3, 3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _hed(seed: int = 0) -> HED:
    torch.manual_seed(seed)
    return HED(widths=WIDTHS, depths=DEPTHS)


@pytest.fixture(scope="module")
def features() -> VGGFeatures:
    """A small random trunk of HED's topology (the real weights live in ../shared)."""
    return VGGFeatures(_hed())


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, degraded): a smooth image and a brighter, noisier copy of it."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(x / 5.0) * torch.cos(y / 7.0)
    clean = (base + 0.1 * torch.rand(batch, 3, size, size, generator=generator)).clamp(0, 1)
    degraded = (0.6 * clean + 0.35 + 0.1 * torch.rand(clean.shape, generator=generator)).clamp(0, 1)
    return clean, degraded


def _levels(batch: int, shapes: list[tuple[int, ...]], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, *shape, generator=generator, dtype=torch.float64) for shape in shapes]


# ------------------------------------------------------------------------------ feature network
def test_features_are_relu_k_1_of_the_trunk_at_strides_1_to_16(features: VGGFeatures) -> None:
    clean = _images(1)[0]
    rgb = torch.cat([clean, clean[:, :, :16]], dim=2)  # 48 x 32: not square
    maps = features(rgb)
    assert len(maps) == 5
    for feature, width, stride in zip(maps, WIDTHS, (1, 2, 4, 8, 16)):
        assert feature.shape == (1, width, 48 // stride, 32 // stride)

    hed = _hed()  # the same weights: run the whole HED and catch relu{k}_1 of every stage
    caught: list[torch.Tensor] = []
    hooks = [
        stage.relu1.register_forward_hook(lambda _m, _i, out: caught.append(out.clone()))
        for stage in hed.stages
    ]
    with torch.no_grad():
        hed(HEDForInference.preprocess(rgb))
    for hook in hooks:
        hook.remove()
    for got, expected in zip(maps, caught, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_feature_network_is_frozen_and_stays_in_eval_mode() -> None:
    net = VGGFeatures(_hed())
    assert not net.training
    assert net.train() is net
    assert not any(module.training for module in net.modules())
    net.train(True)
    assert not any(module.training for module in net.modules())
    assert all(not p.requires_grad for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) > 0


# ---------------------------------------------------------------------------- contrastive ratio
def test_ratio_is_zero_when_the_anchor_is_the_positive() -> None:
    shapes = [(2, 4, 4), (3, 2, 2)]
    positive = _levels(2, shapes, seed=1)
    negative = _levels(2, shapes, seed=2)
    anchor = [p.clone() for p in positive]
    for hard in (False, True):
        assert float(contrastive_ratio(anchor, positive, negative, (1.0, 1.0), hard=hard)) == 0.0


@pytest.mark.parametrize("hard", [False, True])
def test_ratio_matches_a_hand_computation(hard: bool) -> None:
    shapes = [(2, 2, 2), (1, 1, 3)]
    weights = (0.5, 2.0)
    anchor, positive, negative = (_levels(3, shapes, seed=s) for s in (1, 2, 3))
    expected = 0.0
    for w, a, p, n in zip(weights, anchor, positive, negative):
        d_ap = float((a - p).abs().sum()) / a.numel()
        if hard:  # every anchor i against every negative j, all pairs weighted equally
            pairs = itertools.product(range(len(a)), range(len(n)))
            d_an = sum(float((a[i] - n[j]).abs().mean()) for i, j in pairs) / (len(a) * len(n))
        else:
            d_an = sum(float((a[i] - n[i]).abs().mean()) for i in range(len(a))) / len(a)
        expected += w * d_ap / (d_an + EPS)
    got = contrastive_ratio(anchor, positive, negative, weights, hard=hard)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_hard_differs_from_soft_only_with_several_images() -> None:
    shapes = [(2, 3, 3)]
    anchor, positive, negative = (_levels(2, shapes, seed=s) for s in (4, 5, 6))
    soft = contrastive_ratio(anchor, positive, negative, (1.0,))
    hard = contrastive_ratio(anchor, positive, negative, (1.0,), hard=True)
    assert float(hard) != pytest.approx(float(soft), rel=1e-6)
    one = [[t[:1]] for t in (anchor[0], positive[0], negative[0])]
    assert float(contrastive_ratio(*one, (1.0,), hard=True)) == pytest.approx(
        float(contrastive_ratio(*one, (1.0,))), rel=1e-12
    )


@pytest.mark.parametrize("hard", [False, True])
def test_ratio_falls_as_the_anchor_moves_from_negative_to_positive(hard: bool) -> None:
    shapes = [(2, 4, 4), (4, 2, 2)]
    positive = _levels(1, shapes, seed=7)
    negative = _levels(1, shapes, seed=8)
    ratios = []
    for t in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        anchor = [n + t * (p - n) for p, n in zip(positive, negative)]
        ratios.append(float(contrastive_ratio(anchor, positive, negative, (1.0, 0.5), hard=hard)))
    assert all(later < earlier for earlier, later in zip(ratios, ratios[1:]))
    assert ratios[-1] == 0.0


def test_ratio_pushes_only_the_anchor() -> None:
    shapes = [(2, 3, 3), (3, 2, 2)]
    anchor, positive, negative = (
        [t.requires_grad_() for t in _levels(2, shapes, seed=s)] for s in (1, 2, 3)
    )
    for hard in (False, True):
        contrastive_ratio(anchor, positive, negative, (1.0, 1.0), hard=hard).backward()
    assert all(a.grad is not None and bool(a.grad.abs().sum() > 0) for a in anchor)
    assert all(t.grad is None for t in (*positive, *negative))


# ------------------------------------------------------------------------------------- SCR, HCR
@pytest.mark.parametrize("loss_type", [SCRLoss, HCRLoss])
def test_loss_is_zero_when_restored_is_clean(features: VGGFeatures, loss_type: type) -> None:
    clean, degraded = _images(2)
    loss = loss_type(features)
    assert loss.weights == CR_WEIGHTS
    assert float(loss(clean.clone(), clean, degraded)) == 0.0
    assert float(loss(degraded.clone(), clean, degraded)) > 0.0


@pytest.mark.parametrize("loss_type", [SCRLoss, HCRLoss])
def test_gradient_reaches_the_restored_image_only(features: VGGFeatures, loss_type: type) -> None:
    clean, degraded = _images(2)
    restored = (0.5 * clean + 0.5 * degraded).requires_grad_()
    clean.requires_grad_()
    degraded.requires_grad_()
    value = loss_type(features)(restored, clean, degraded)
    assert value.ndim == 0 and bool(torch.isfinite(value)) and float(value.detach()) > 0
    value.backward()
    assert restored.grad is not None and bool(torch.isfinite(restored.grad).all())
    assert float(restored.grad.abs().sum()) > 0
    assert clean.grad is None and degraded.grad is None
    assert all(not p.requires_grad and p.grad is None for p in features.parameters())


def test_hcr_of_one_image_is_scr(features: VGGFeatures) -> None:
    clean, degraded = _images(1, seed=3)
    restored = 0.3 * clean + 0.7 * degraded
    hcr = HCRLoss(features)(restored, clean, degraded)
    scr = SCRLoss(features)(restored, clean, degraded)
    torch.testing.assert_close(hcr, scr, rtol=1e-6, atol=0)


def test_hcr_uses_every_degraded_input_of_the_batch(features: VGGFeatures) -> None:
    clean, degraded = _images(2)
    restored = 0.3 * clean + 0.7 * degraded
    with torch.no_grad():
        a, p, n = features(restored), features(clean), features(degraded)
    torch.testing.assert_close(
        HCRLoss(features)(restored, clean, degraded), contrastive_ratio(a, p, n, hard=True)
    )
    # swapping the batch's negatives changes SCR (own input) but not HCR (all inputs)
    swapped = degraded.flip(0)
    torch.testing.assert_close(
        HCRLoss(features)(restored, clean, swapped), HCRLoss(features)(restored, clean, degraded)
    )
    assert float(SCRLoss(features)(restored, clean, swapped)) != pytest.approx(
        float(SCRLoss(features)(restored, clean, degraded)), rel=1e-3
    )


# ------------------------------------------------------------------------------------------ CKT
CHANNELS = (4, 8)
TEACHERS = 3


def _ckt_inputs(
    seed: int = 0,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]]]:
    """Student output/features of a 3-image batch, and each teacher's of its own 1-image block."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    student_output = rand(TEACHERS, 3, 8, 8).requires_grad_()
    student_features = [rand(TEACHERS, c, 4, 4).requires_grad_() for c in CHANNELS]
    teacher_outputs = [rand(1, 3, 8, 8) for _ in range(TEACHERS)]
    teacher_features = [[rand(1, c, 4, 4).requires_grad_() for c in CHANNELS] for _ in range(TEACHERS)]
    return student_output, student_features, teacher_outputs, teacher_features


def _ckt() -> CKTLoss:
    torch.manual_seed(0)
    return CKTLoss(CHANNELS, TEACHERS)


def test_ckt_returns_its_three_terms() -> None:
    terms = _ckt()(*_ckt_inputs())
    assert set(terms) == {"output", "projected", "reconstruction"}
    for value in terms.values():
        assert value.ndim == 0 and bool(torch.isfinite(value)) and float(value.detach()) > 0


def test_ckt_output_term_is_l1_to_the_concatenated_teachers() -> None:
    ckt = _ckt()
    student_output, student_features, teacher_outputs, teacher_features = _ckt_inputs()
    terms = ckt(student_output, student_features, teacher_outputs, teacher_features)
    torch.testing.assert_close(terms["output"], F.l1_loss(student_output, torch.cat(teacher_outputs)))
    same = torch.cat(teacher_outputs).clone()
    assert float(ckt(same, student_features, teacher_outputs, teacher_features)["output"].detach()) == 0.0


def test_ckt_projected_term_trains_the_student_side() -> None:
    ckt = _ckt()
    student_output, student_features, teacher_outputs, teacher_features = _ckt_inputs()
    ckt(student_output, student_features, teacher_outputs, teacher_features)["projected"].backward()
    for feature in student_features:
        assert feature.grad is not None and float(feature.grad.abs().sum()) > 0
    for parameter in ckt.student_projectors.parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0
    assert student_output.grad is None
    assert all(p.grad is None for t in ckt.teacher_projectors for p in t.inverse.parameters())


def test_ckt_reconstruction_trains_the_teacher_projectors_only() -> None:
    ckt = _ckt()
    student_output, student_features, teacher_outputs, teacher_features = _ckt_inputs()
    ckt(student_output, student_features, teacher_outputs, teacher_features)["reconstruction"].backward()
    for parameter in ckt.teacher_projectors.parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0
    assert all(p.grad is None for p in ckt.student_projectors.parameters())
    assert student_output.grad is None and all(f.grad is None for f in student_features)


def test_ckt_leaves_the_teacher_features_alone() -> None:
    ckt = _ckt()
    student_output, student_features, teacher_outputs, teacher_features = _ckt_inputs()
    before = [[f.detach().clone() for f in levels] for levels in teacher_features]
    terms = ckt(student_output, student_features, teacher_outputs, teacher_features)
    sum(terms.values()).backward()
    for levels, saved in zip(teacher_features, before):
        for feature, copy in zip(levels, saved):
            assert feature.grad is None
            assert torch.equal(feature, copy)
    assert student_output.grad is not None
