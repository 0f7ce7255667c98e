"""training/weather/teacher_eval.py: outside pairs load in natural order and fail without their
twin; scores are 8-bit whole-image PSNR, kept per image, resumed without rerunning a network;
the table's gain is over the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restore.core.metrics import psnr
from restore.core.pixels import to_pixels as quantize
from training.weather.teacher_eval import evaluate, load_pairs, main, table


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(quantize(image)).save(path)


def _pairs(folder: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        clean = rng.random((9, 13, 3)).astype(np.float32)
        _write(folder / "norain" / f"{name}.png", clean)
        _write(folder / "rain" / f"{name}.png", np.clip(clean + 0.2, 0, 1))


def test_load_pairs_natural_order_and_twins(tmp_path: Path) -> None:
    _pairs(tmp_path, ["norain-10", "norain-2", "norain-1"])
    assert [n for n, _, _ in load_pairs(tmp_path)] == ["norain-1", "norain-2", "norain-10"]
    (tmp_path / "norain" / "norain-2.png").unlink()
    with pytest.raises(FileNotFoundError, match="no clean twin"):
        load_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no rain"):
        load_pairs(tmp_path / "absent")


def test_evaluate_scores_once_and_resumes(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a", "b"])
    sets = {"outside": load_pairs(tmp_path)}
    calls: list[str] = []

    def darker(x: np.ndarray) -> np.ndarray:
        calls.append("darker")
        return x - 0.2

    scores = evaluate(sets, iter([("input", lambda x: x), ("darker", darker)]), {})
    assert len(calls) == 2
    _, rainy, clean = sets["outside"][0]
    assert scores["outside"]["input"]["a"] == round(psnr(quantize(rainy), quantize(clean)), 3)
    assert scores["outside"]["darker"]["a"] > scores["outside"]["input"]["a"] + 5

    def failing(x: np.ndarray) -> np.ndarray:
        raise AssertionError("an image already scored was run again")

    again = evaluate(sets, iter([("darker", failing)]), scores)
    assert again == scores
    text = table(scores, {"outside": ["a", "b"]})
    gain = np.mean([scores["outside"]["darker"][n] - scores["outside"]["input"][n] for n in "ab"])
    assert f"| darker | {np.mean(list(scores['outside']['darker'].values())):.2f} / {gain:+.2f} |" in text
    assert table(scores, {"outside": ["a", "b", "c"]}).endswith("| darker |  |")


def test_main_writes_resumable_scores(tmp_path: Path) -> None:
    """The held-out layout (testset.json, clean/, rain/) plus one outside folder; input only."""
    testset = tmp_path / "testset"
    rng = np.random.default_rng(1)
    for name in ("x", "y"):
        clean = rng.random((8, 8, 3)).astype(np.float32)
        _write(testset / "clean" / f"{name}.png", clean)
        _write(testset / "rain" / f"{name}.png", clean * 0.5)
    (testset / "testset.json").write_text('{"images": ["x", "y"]}')
    _pairs(tmp_path / "outside" / "test", ["norain-1"])
    scores = tmp_path / "scores.json"
    root = tmp_path / "no-weights"  # the public teachers are absent: their loading fails loudly
    argv = ["--testset", str(testset), "--weathers", "rain", "--outside", str(tmp_path / "outside" / "test"),
            "--root", str(root), "--scores", str(scores)]
    with pytest.raises(FileNotFoundError):
        main(argv)
    assert set(__import__("json").loads(scores.read_text())) == {"heldout-rain", "outside-test"}
