"""training/weather/soup.py: the weight mix is exact, the selection rule never trades away a
weather, and the written checkpoint is the chosen mix with its provenance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.weather import build_network, load_student
from training.weather.soup import choose, main, mix
from training.weather.train import WeatherTrainConfig, validation_set

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = WeatherTrainConfig(architecture="weathernet", width=0.5, attention="dct", head="physical", stage="stage2")


def _scores(rain: float, haze: float, snow: float, clean: float) -> dict[str, float]:
    return {"psnr_rain": rain, "psnr_haze": haze, "psnr_snow": snow, "psnr_clean": clean}


def test_mix_is_the_weighted_mean_and_refuses_other_networks() -> None:
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 2.0]).bfloat16(), "n": torch.tensor(5)}
    assert torch.equal(mix(a, b, 0.0)["w"], a["w"]) and torch.equal(mix(a, b, 1.0)["w"], b["w"].float())
    half = mix(a, b, 0.25)
    assert half["w"].dtype == torch.float32 and torch.allclose(half["w"], torch.tensor([1.0, 2.0]))
    assert int(half["n"]) == 5  # integer buffers are not averaged
    with pytest.raises(ValueError, match="different networks"):
        mix(a, {"w": b["w"]}, 0.5)


def test_choose_takes_the_most_clean_psnr_that_loses_no_weather() -> None:
    scores = {
        0.0: _scores(22.0, 19.0, 20.0, 28.0),
        0.3: _scores(22.1, 19.1, 20.0, 29.0),
        0.5: _scores(22.1, 19.2, 20.1, 30.0),
        0.7: _scores(21.9, 19.3, 20.2, 32.0),  # best clean, but loses rain
    }
    assert choose(scores) == 0.5
    assert choose({0.0: scores[0.0], 0.7: scores[0.7]}) == 0.0  # nothing qualifies: keep --a


def _checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_network(dataclasses.asdict(TINY))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"config": dataclasses.asdict(TINY), "model": state, "ckt": None, "optimizer": None,
                "iteration": 7, "elapsed_s": 60.0, "history": [{"iteration": 7}]}, path)
    return state


def _photos(tmp_path: Path) -> tuple[Path, Path]:
    """Three BSDS-like test photos, one of them in a held-out set."""
    rng = np.random.default_rng(0)
    bsds, testset = tmp_path / "bsds", tmp_path / "test"
    (bsds / "images" / "test").mkdir(parents=True)
    (testset / "clean").mkdir(parents=True)
    for name in ("held", "v1", "v2"):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(bsds / "images" / "test" / f"{name}.jpg")
    Image.new("RGB", (8, 8)).save(testset / "clean" / "held.png")
    return bsds, testset


def test_validation_can_use_whole_photos_outside_the_held_out_set(tmp_path: Path) -> None:
    bsds, _ = _photos(tmp_path)
    whole = validation_set(bsds, {"held"}, 5, crop=None)
    cropped = validation_set(bsds, {"held"}, 5, crop=32)
    assert [c.shape for _, c in whole["clean"]] == [(40, 48, 3)] * 2  # v1, v2: never "held"
    assert [d.shape for d, _ in cropped["rain"]] == [(32, 32, 3)] * 2
    assert np.array_equal(cropped["clean"][0][1], whole["clean"][0][1][4:36, 8:40])


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_main_writes_the_chosen_mix_with_its_scores(tmp_path: Path) -> None:
    bsds, testset = _photos(tmp_path)
    a, b = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "soup.pt"
    main(["--a", str(tmp_path / "a.pt"), "--b", str(tmp_path / "b.pt"), "--alphas", "0.5", "1",
          "--bsds", str(bsds), "--testset", str(testset), "--val-count", "2", "--out", str(out)])

    model, meta = load_student(out)
    soup = meta["soup"]
    assert set(soup["scores"]) == {"0.0", "0.5", "1.0"}
    assert soup["alpha"] == choose({float(k): v for k, v in soup["scores"].items()})
    expected = mix(a, b, soup["alpha"])
    assert all(torch.equal(v, expected[k].to(v.dtype)) for k, v in model.state_dict().items())
    assert meta["command"].startswith("python -m training.weather.soup") and meta["history"] == []


def test_main_refuses_to_run_without_a_held_out_set_to_exclude(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="held-out"):
        main(["--a", "a.pt", "--b", "b.pt", "--testset", str(tmp_path), "--out", str(tmp_path / "s.pt")])
