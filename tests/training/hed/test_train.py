"""training/hed/train.py: the class-balanced loss, the crops, and that a step learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.hed import HED
from training.hed.bsds import thresholds_for
from training.hed.train import EdgeSamples, HEDTrainConfig, HEDTrainer, _parse_args, balanced_bce, compact_state, load_compact_state, validate

pytestmark = pytest.mark.usefixtures("one_thread")


def _label() -> torch.Tensor:
    label = torch.zeros(1, 1, 8, 8)
    label[0, 0, 4, :] = 1.0  # 8 edge pixels
    label[0, 0, 2, :2] = 0.25  # 2 uncertain pixels: ignored
    return label


def test_balanced_bce_weights_edges_by_the_share_of_non_edges() -> None:
    label = _label()
    edge, plain = label >= 0.5, label == 0
    logits = torch.zeros(1, 1, 8, 8)  # p = 0.5 everywhere: every pixel costs log 2
    beta = plain.sum() / (plain.sum() + edge.sum())  # 54 / 62
    expected = float((beta * edge.sum() + (1 - beta) * plain.sum()) * np.log(2) / 64)
    assert float(balanced_bce(logits, label, eta=0.5)) == pytest.approx(expected, rel=1e-6)


def test_balanced_bce_is_near_zero_when_right_and_ignores_the_uncertain_band() -> None:
    label = _label()
    right = torch.where(label >= 0.5, 20.0, -20.0).expand(1, 6, 8, 8)
    assert float(balanced_bce(right, label, eta=0.5)) < 1e-6
    wrong_only_in_band = right.clone()
    wrong_only_in_band[:, :, 2, :2] = 20.0  # the uncertain pixels called edges: no cost
    assert float(balanced_bce(wrong_only_in_band, label, eta=0.5)) < 1e-6
    assert float(balanced_bce(-right, label, eta=0.5)) > 10  # every output counts


def test_edge_samples_are_pure_and_shaped() -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((40, 30, 3), dtype=np.float32) for _ in range(3)]
    labels = [(rng.random((40, 30)) > 0.9).astype(np.float32) for _ in range(3)]
    samples = EdgeSamples(images, labels, patch=32, seed=1)
    x, y = samples.batch(5, 4)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32)
    np.testing.assert_array_equal(x, samples.batch(5, 4)[0])
    assert not np.array_equal(x, samples.batch(6, 4)[0])
    assert set(np.unique(y)) <= {0.0, 1.0}


@pytest.mark.parametrize("amp, channels_last", [(False, False), (True, True)])
def test_steps_lower_the_loss_on_one_batch(amp: bool, channels_last: bool) -> None:
    torch.manual_seed(0)
    image = np.full((32, 32, 3), 0.2, np.float32)
    image[:, 16:] = 0.8  # one vertical edge
    label = np.zeros((32, 32), np.float32)
    label[:, 15:17] = 1.0
    model = HED(widths=(4, 8, 8, 8, 8), depths=(1, 1, 1, 1, 1))
    config = HEDTrainConfig(patch=32, batch_size=2, lr=1e-2, amp=amp, channels_last=channels_last)
    trainer = HEDTrainer(config, model, EdgeSamples([image], [label], 32, 0))
    losses = []
    for _ in range(8):
        trainer.iteration = 0  # the same batch every step
        losses.append(trainer.step())
    assert losses[-1] < losses[0]


def test_validate_scores_a_perfect_map_as_ods_one() -> None:
    boundary = np.zeros((48, 48), bool)
    boundary[24, 4:44] = True

    class Perfect(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.full((1, 6, 48, 48), -20.0)
            logits[:, :, 24, 4:44] = 20.0
            return logits

    rgb = np.zeros((48, 48, 3), np.uint8)
    ods = validate(Perfect(), [(rgb, [boundary])], thresholds_for(5))  # type: ignore[arg-type]
    assert ods == pytest.approx(1.0, abs=1e-6)


def test_boolean_settings_are_flags() -> None:
    args = _parse_args(["--data", "d", "--out", "o", "--amp", "--no-channels-last", "--benchmark", "3"])
    assert args.amp is True and args.channels_last is False and args.benchmark == 3
    assert _parse_args(["--data", "d", "--out", "o"]).amp is None  # unset: the config's default


def test_the_compact_checkpoint_resumes_the_weights_and_second_moment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """compact_state keeps the weights as a bfloat16 change from the initial weights and Adam's
    second moment in bfloat16 (half the bytes of each, no first moment); load_compact_state
    restores both, so the resumed weights differ from the trained ones only by the rounding of the
    change, far below the change itself, and training continues from the same iteration."""
    torch.manual_seed(0)
    image = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    label = (np.random.default_rng(1).random((40, 40)) > 0.9).astype(np.float32)
    samples = EdgeSamples([image], [label], 32, 0)
    config = HEDTrainConfig(patch=32, batch_size=2, lr=1e-3)
    model = HED(widths=(4, 8, 8, 8, 8), depths=(1, 1, 1, 1, 1))
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = HEDTrainer(config, model, samples)
    for _ in range(3):
        trainer.step()
    state = compact_state(trainer, init)
    torch.save(state, tmp_path / "compact.pt")
    assert all(t.dtype == torch.bfloat16 for t in [*state["delta"].values(), *state["exp_avg_sq"].values()])
    assert state["iteration"] == 3 and set(state["delta"]) == set(init)

    fresh = HED(widths=(4, 8, 8, 8, 8), depths=(1, 1, 1, 1, 1))
    fresh.load_state_dict({**fresh.state_dict(), **init})
    resumed = HEDTrainer(config, fresh, samples)
    load_compact_state(resumed, torch.load(tmp_path / "compact.pt", weights_only=False), init)
    assert resumed.iteration == 3
    for (name, p), q in zip(trainer.model.named_parameters(), resumed.model.parameters()):
        change = (p.detach() - init[name]).abs().max()
        assert float((p.detach() - q.detach()).abs().max()) <= float(change) / 128 + 1e-12
        v, w = trainer.optimizer.state[p]["exp_avg_sq"], resumed.optimizer.state[q]["exp_avg_sq"]
        torch.testing.assert_close(w, v.to(torch.bfloat16).float())
        assert float(resumed.optimizer.state[q]["step"]) == 3
    assert np.isfinite(resumed.step()) and resumed.iteration == 4


def test_side_weight_scales_only_the_side_outputs() -> None:
    label = _label()
    logits = torch.zeros(1, 6, 8, 8)
    logits[:, 0] = torch.where(label[:, 0] >= 0.5, 20.0, -20.0)  # the fused output right, the sides undecided
    fused_only = float(balanced_bce(logits, label, eta=0.5, side_weight=0.0))
    assert fused_only < 1e-6
    assert float(balanced_bce(logits, label, eta=0.5, side_weight=0.5)) == pytest.approx(
        0.5 * float(balanced_bce(logits, label, eta=0.5)), rel=1e-6)
