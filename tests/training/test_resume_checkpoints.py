"""The committed compact checkpoints (resume/) hold tensors and plain data only: no class of ours is
pickled by its module path, so moving or renaming a module never stops a training run resuming."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

RESUME = Path(__file__).resolve().parents[2] / "resume"
CHECKPOINTS = sorted(RESUME.rglob("*.pt"))


@pytest.mark.skipif(not CHECKPOINTS, reason="no compact checkpoints under resume/")
@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.relative_to(RESUME).as_posix())
def test_checkpoint_loads_without_project_classes(path: Path) -> None:
    """``weights_only=True`` refuses any pickled global beyond tensors and builtins, so this load
    proves the file names no module of the project; the resume code reads its config as a dict."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state["config"], dict) and state["model"]
    assert all(isinstance(value, torch.Tensor) for value in state["model"].values())
