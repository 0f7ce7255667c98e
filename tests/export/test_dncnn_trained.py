"""export/dncnn_trained.py: exact BatchNorm folding; a trained checkpoint exports like a release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import dncnn_trained
from export.dncnn import dncnn_from_onnx
from export.dncnn_trained import fold_batch_norm
from export.onnx_export import max_abs_diff, run_onnx
from models.dncnn import DnCNN
from restore.core.manifest import read_manifest, write_manifest
from training.dncnn.trainer import TrainConfig, Trainer, save_checkpoint


def _randomize_batch_norm(model: DnCNN, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.body:
            bn = block.bn
            for tensor in (bn.weight, bn.bias, bn.running_mean):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.1)


def test_fold_batch_norm_is_exact() -> None:
    torch.manual_seed(0)
    model = DnCNN(channels=3, depth=5, features=8, batch_norm=True)
    _randomize_batch_norm(model)
    folded = fold_batch_norm(model.eval())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert set(folded.state_dict()) == set(DnCNN(3, 5, 8, batch_norm=False).state_dict())
    x = torch.rand(2, 3, 19, 23)
    with torch.inference_mode():
        assert float((folded(x) - model(x)).abs().max()) < 1e-5


def test_checkpoint_exports_with_provenance(tmp_path: Path) -> None:
    patches = np.random.default_rng(0).integers(0, 256, (16, 1, 40, 40), dtype=np.uint8)
    config = TrainConfig(depth=4, features=8, batch_size=8, iterations=2, epoch_iters=2)
    trainer = Trainer(config, patches)
    for _ in range(2):
        trainer.train_step()
    meta = {"command": "python -m training.dncnn.train ...", "machine": "test", "elapsed_s": 90.0,
            "best_psnr": 20.5}
    save_checkpoint(tmp_path / "best.pt", {**trainer.state_dict(), **meta})
    out = tmp_path / "onnx"
    write_manifest(out / "manifest.json", [])

    args = ["--checkpoint", str(tmp_path / "best.pt"), "--name", "tiny-ours", "--out", str(out)]
    assert dncnn_trained.main(args) == 0
    (entry,) = read_manifest(out / "manifest.json")
    assert entry["default"] is False and entry["sigma"] == 25 and entry["overlap"] == 4
    provenance = entry["provenance"]
    assert provenance["source"] == "trained" and provenance["license"] == "MIT"
    assert provenance["command"] == meta["command"] and "1.5 min" in provenance["duration"]
    assert "Train400" in provenance["data"] and provenance["machine"] == "test"

    # The committed-model check (rebuild from the ONNX initializers) applies unchanged.
    proto = onnx.load(str(out / "tiny-ours.onnx"))
    rebuilt = dncnn_from_onnx(proto)
    x = np.random.default_rng(1).random((1, 1, 21, 17), dtype=np.float32)
    with torch.inference_mode():
        expected = rebuilt(torch.from_numpy(x)).numpy()
        trained = trainer.model.eval()(torch.from_numpy(x)).numpy()
    assert max_abs_diff(run_onnx(out / "tiny-ours.onnx", x), expected) <= 1e-4
    assert max_abs_diff(expected, trained) <= 1e-2  # float16 storage of the folded weights


def test_blend_is_the_straight_line_between_the_two_models() -> None:
    torch.manual_seed(0)
    tuned, start = DnCNN(3, 4, 8, batch_norm=False).eval(), DnCNN(3, 4, 8, batch_norm=False).eval()
    for alpha, expect in ((1.0, tuned), (0.0, start)):
        blended = dncnn_trained.blend_with_init(tuned, start, alpha)
        assert all(torch.equal(blended.state_dict()[k], v) for k, v in expect.state_dict().items())
    quarter = dncnn_trained.blend_with_init(tuned, start, 0.25).state_dict()
    for key, value in quarter.items():
        assert torch.allclose(value, 0.25 * tuned.state_dict()[key] + 0.75 * start.state_dict()[key], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dncnn_trained.blend_with_init(tuned, start, 1.5)
