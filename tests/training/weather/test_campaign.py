"""training/weather/campaign.py and teacher_cache.py: labels per row, distillation from stored
teacher outputs, a warm start from a blind student, exact resume, and the EMA being what is scored."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import training.weather.teacher_cache as cache
from models.weathernet import WEATHER_LABELS, WeatherNet, WeatherNetConfig
from training.weather.campaign import Campaign, CampaignConfig, resumed_phases, row_labels
from training.weather.pool import PairPool, teacher_file
from training.weather.teacher_cache import write_teacher_outputs
from training.weather.teachers import TEACHERS, load_teacher, teacher_path


pytestmark = pytest.mark.usefixtures("one_thread")

NETWORK = dict(width=8, max_channels=16, encoder_blocks=(1, 1, 1, 1), middle_blocks=1, decoder_blocks=(1, 1, 1, 1),
               conditions=4, upsample="bilinear")


def config(**changes: object) -> CampaignConfig:
    base = CampaignConfig(network=WeatherNetConfig(**NETWORK).as_dict(), patch=32,
                          rows={"rain": 2, "haze": 1, "snow": 1, "clean": 2}, lr=1e-3, warmup=1, ema=0.9)
    return dataclasses.replace(base, **changes)


def test_labels_follow_the_rows_with_unknown_and_every_label_on_clean_rows() -> None:
    cfg = config(rows={"rain": 50, "clean": 200}, unknown_rate=0.25)
    labels = row_labels(cfg, 3)
    rain, clean = labels[:50], labels[50:]
    assert set(rain) == {"rain", "unknown"} and 5 <= rain.count("unknown") <= 22
    assert set(clean) == set(WEATHER_LABELS)
    assert labels == row_labels(cfg, 3) and labels != row_labels(cfg, 4)
    assert set(row_labels(config(rows={"rain_heavy": 40}, unknown_rate=0.25), 0)) == {"rain", "unknown"}


def test_the_teacher_cache_is_cropped_with_its_pairs(pool_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored teacher output travels with its pair through crops, flips and rotations: with
    the identity as the teacher, the teacher crop equals the degraded crop."""

    monkeypatch.setattr(cache, "load_teacher", lambda name, root: torch.nn.Identity())
    copy = tmp_path / "pool"
    copy.mkdir()
    for f in pool_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta = write_teacher_outputs(copy, "rain", "prenet-rain100h", count=4, chunk=3)
    assert meta["done"] == 4 and teacher_file(copy, "rain").exists()
    pool = PairPool(copy, 32, seed=2)
    clean, degraded, teacher, mask = pool.triples(5, {"rain": 8, "clean": 2})
    assert mask[:8].any() and not mask[8:].any()
    np.testing.assert_array_equal(teacher[mask], degraded[mask])
    np.testing.assert_array_equal(teacher[~mask], clean[~mask])
    np.testing.assert_array_equal(pool.batch(5, {"rain": 8, "clean": 2})[1], degraded)


def test_steps_lower_the_loss_with_and_without_the_teacher(pool_dir: Path) -> None:
    pool = PairPool(pool_dir, 32, seed=0)
    for kd in (0.0, 0.5):
        campaign = Campaign(config(kd=kd), pool)
        campaign.batch = lambda index, c=campaign, b=campaign.batch: b(0)  # type: ignore[method-assign]
        first = campaign.step()["loss"]
        for _ in range(25):
            last = campaign.step()["loss"]
        assert last < first


def test_a_warm_start_from_a_blind_student_keeps_its_function(pool_dir: Path) -> None:
    blind_config = WeatherNetConfig(**dict(NETWORK, conditions=0, encoder_blocks=(0, 1, 1, 1)))
    blind = WeatherNet(blind_config)
    with torch.no_grad():
        for p in blind.parameters():
            p.add_(0.05 * torch.randn_like(p))
    campaign = Campaign(config(network=dict(WeatherNetConfig(**dict(NETWORK, upsample="bilinear")).as_dict())),
                        PairPool(pool_dir, 32, seed=0), blind.state_dict(),
                        dataclasses.replace(blind_config, upsample="bilinear"))
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(campaign.model.eval()(x), blind.eval()(x), atol=1e-6)
        assert torch.allclose(campaign.ema.module.eval()(x), blind(x), atol=1e-6)


def test_resume_reproduces_the_uninterrupted_run(pool_dir: Path, tmp_path: Path) -> None:
    pool = PairPool(pool_dir, 32, seed=0)
    straight = Campaign(config(), pool)
    for _ in range(6):
        straight.step()
    first = Campaign(config(), pool)
    for _ in range(3):
        first.step()
    torch.save(first.state_dict(), tmp_path / "last.pt")
    resumed = Campaign(config(), pool)
    resumed.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False))
    for _ in range(3):
        resumed.step()
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other settings"):
        Campaign(config(kd=0.25), pool).load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False))
    # a hand-made step of the learning rate is allowed: it changes no past step
    stepped = Campaign(config(lr=5e-4), pool)
    stepped.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False))
    stepped.step()
    assert stepped.optimizer.param_groups[0]["lr"] == 5e-4
    # so is a new batch mix: later batches only
    remixed = Campaign(config(rows={"rain": 1, "haze": 3, "snow": 1, "clean": 1}), pool)
    remixed.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False))
    assert remixed.batch(remixed.iteration)[0].shape[0] == 6


def test_phases_record_each_hand_made_change_and_where_it_began() -> None:
    """Rate steps of a checkpoint without phases are read from its log; a resume that changes
    the rows or adds a teacher opens a phase at the resumed iteration; one that changes nothing
    adds none."""
    saved = config()
    state = {"config": dataclasses.asdict(saved), "iteration": 1200, "teachers": {"rain": {}},
             "history": [{"iteration": 500, "lr": 1e-3}, {"iteration": 912, "lr": 1e-3},
                         {"iteration": 1000, "lr": 2e-4}, {"iteration": 1200, "lr": 2e-4}]}
    unchanged = resumed_phases(state, dataclasses.replace(saved, lr=2e-4), {"rain": {}})
    assert [(p["iteration"], p["lr"]) for p in unchanged] == [(0, 1e-3), (912, 2e-4)]
    more_haze = dataclasses.replace(saved, lr=2e-4, rows={"rain": 2, "haze": 3, "snow": 1, "clean": 2})
    phases = resumed_phases(state, more_haze, {"rain": {}, "haze": {}})
    assert phases[-1] == {"iteration": 1200, "lr": 2e-4, "rows": more_haze.rows, "teachers": ["haze", "rain"],
                          "compile": False, "refine_lr_scale": 1.0}
    assert resumed_phases({**state, "phases": phases}, more_haze, {"rain": {}, "haze": {}}) == phases
    # phases recorded before compile was one take the saved run's setting
    older = [{k: v for k, v in p.items() if k not in ("compile", "refine_lr_scale")} for p in phases]
    assert resumed_phases({**state, "phases": older}, more_haze, {"rain": {}, "haze": {}}) == older
    eager = resumed_phases({**state, "phases": older, "config": dataclasses.asdict(dataclasses.replace(saved, compile=True))},
                           more_haze, {"rain": {}, "haze": {}})
    assert eager[-1] == {**phases[-1], "compile": False} and len(eager) == len(older) + 1


def test_the_refine_stage_trains_at_its_own_rate_and_a_resume_may_change_it(pool_dir: Path, tmp_path: Path) -> None:
    """A full-resolution Refine stage added to a trained network has an optimiser group of its
    own at ``refine_lr_scale`` x the rate; the grouping depends on the network only, so a resume
    with another scale loads the optimiser and records the change as a phase."""
    pool = PairPool(pool_dir, 32, seed=0)
    cfg = config(network=WeatherNetConfig(**dict(NETWORK, refine=8, refine_layers=3)).as_dict(), refine_lr_scale=10.0)
    campaign = Campaign(cfg, pool)
    campaign.step()
    groups = campaign.optimizer.param_groups
    assert [g.get("name") for g in groups] == [None, "refine"]
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in campaign.model.refine.parameters()}
    state = campaign.state_dict()
    slower = dataclasses.replace(cfg, refine_lr_scale=2.0)
    resumed = Campaign(slower, pool)
    resumed.load_state_dict(state)
    resumed.step()
    assert resumed.optimizer.param_groups[1]["lr"] == pytest.approx(2 * resumed.optimizer.param_groups[0]["lr"])
    assert resumed_phases({**state, "phases": [{"iteration": 0, "lr": cfg.lr, "rows": cfg.rows, "teachers": [],
                                                "compile": False, "refine_lr_scale": 10.0}]},
                          slower, {})[-1]["refine_lr_scale"] == 2.0
    assert len(Campaign(config(), pool).optimizer.param_groups) == 1  # no Refine: one group, as before


def test_a_resume_restarts_adam_for_parameters_that_never_had_a_gradient(pool_dir: Path, tmp_path: Path) -> None:
    """A parameter whose gradient was always zero (as torch.compile's backward once gave two
    thirds of model 3) gets Adam's step count restarted on resume; the others keep theirs."""
    campaign = Campaign(config(), PairPool(pool_dir, 32, seed=0))
    frozen = campaign.model.ups[0][0].weight
    frozen.register_hook(torch.zeros_like)
    for _ in range(3):
        campaign.step()
    torch.save(campaign.state_dict(), tmp_path / "last.pt")
    resumed = Campaign(config(), PairPool(pool_dir, 32, seed=0))
    resumed.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False))
    index = [p is frozen for p in campaign.model.parameters()].index(True)
    assert resumed.restarted == [index]
    states = [resumed.optimizer.state[p] for p in resumed.model.parameters()]
    assert float(states[index]["step"]) == 0 and all(float(s["step"]) == 3 for i, s in enumerate(states) if i != index)


def test_compiled_gradients_are_checked_against_eager(pool_dir: Path) -> None:
    """The check a --compile run makes before training: eager against itself agrees; a forward
    that loses the gradient through an upsampling (what inductor did) names what it cut off."""
    campaign = Campaign(config(), PairPool(pool_dir, 32, seed=0))
    with torch.no_grad():  # away from the identity-like start, where most gradients are zero anyway
        for p in campaign.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert campaign.compiled_gradient_mismatches() == []
    cut = {"on": False}
    campaign.model.ups[0].register_forward_hook(lambda module, args, out: out.detach() if cut["on"] else out)
    campaign.forward = lambda x, w: (cut.update(on=True), campaign.model(x, w))[1]
    wrong = campaign.compiled_gradient_mismatches()
    assert "ups.0.0.weight" in wrong and "middle.0.expand.weight" in wrong
    assert "ending.weight" not in wrong  # after the cut: the same gradient


@pytest.mark.skipif(not teacher_path("student-2.0").exists(), reason="the 2.0 student checkpoint is not in this checkout")
def test_our_own_haze_teacher_is_the_blind_student_2_0() -> None:
    """``student-2.0`` lives in the repository (not under the public teachers' root) and maps an
    image in [0, 1] to one of the same shape in [0, 1], without a weather input."""
    assert TEACHERS["student-2.0"].weather == "haze"
    assert teacher_path("student-2.0", Path("/nowhere")).is_relative_to(Path(__file__).resolve().parents[3])
    image = torch.rand(1, 3, 48, 64)
    out = load_teacher("student-2.0", Path("/nowhere"))(image)
    assert out.shape == image.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_the_ema_lags_the_weights(pool_dir: Path) -> None:
    campaign = Campaign(config(ema=0.99), PairPool(pool_dir, 32, seed=0))
    for _ in range(5):
        campaign.step()
    trained = dict(campaign.model.named_parameters())
    averaged = dict(campaign.ema.module.named_parameters())
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)
