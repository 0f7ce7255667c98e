"""training/common/checkpoints.py compact_checkpoint: a smaller copy that resumes the same network."""

from __future__ import annotations

from pathlib import Path

import torch

from training.common.checkpoints import compact_checkpoint, save_checkpoint


def _checkpoint(path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.Conv2d(64, 3, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 16, 16)).sum().backward()
    optimizer.step()
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "iteration": 1, "config": {"lr": 1e-3}})
    return model, optimizer


def test_compact_halves_the_size_and_resumes_close(tmp_path: Path) -> None:
    model, optimizer = _checkpoint(tmp_path / "full.pt")
    size = compact_checkpoint(tmp_path / "full.pt", tmp_path / "small" / "c.pt")
    assert size < 0.55 * (tmp_path / "full.pt").stat().st_size
    state = torch.load(tmp_path / "small" / "c.pt", weights_only=False)
    assert state["iteration"] == 1 and state["config"] == {"lr": 1e-3}
    for key, value in model.state_dict().items():  # bfloat16: 2**-9 relative
        torch.testing.assert_close(state["model"][key].float(), value, rtol=2**-8, atol=1e-8)
    resumed = torch.optim.Adam(model.parameters(), lr=1e-3)
    resumed.load_state_dict(state["optimizer"])  # bfloat16 moments come back as float32
    for p in model.parameters():
        got, want = resumed.state[p]["exp_avg"], optimizer.state[p]["exp_avg"]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-6)


def test_weights_only_drops_the_optimizer(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "full.pt")
    compact_checkpoint(tmp_path / "full.pt", tmp_path / "w.pt", weights_only=True)
    state = torch.load(tmp_path / "w.pt", weights_only=False)
    assert "optimizer" not in state
    assert all(v.dtype == torch.bfloat16 for v in state["model"].values())
