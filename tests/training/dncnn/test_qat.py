"""training/dncnn/qat.py: the int8 simulation computes what ONNX Runtime's QDQ file computes, the
learned scales reach that file, fine-tuning lowers the int8 error, and a run resumes exactly."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.onnx_export import run_onnx
from export.quantize import COMMAND_KEY, SCALES_KEY, float_nodes, quantize_model
from models.dncnn import DnCNN
from training.dncnn.qat import QATConfig, QuantSimDnCNN, activation_maxima, fine_tune, write_float_model


def _tiny() -> DnCNN:
    """A small folded DnCNN with activations of order one (He-normal weights, small biases), so its
    int8 rounding matters as it does for a trained one."""
    torch.manual_seed(0)
    model = DnCNN(channels=3, depth=5, features=16, batch_norm=False).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.uniform_(module.bias, -0.05, 0.05)
    model.tail.weight.data *= 0.2
    return model


def _noisy(count: int, size: int = 24, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.1, 0.9, size, dtype=np.float32)
    clean = np.broadcast_to(ramp[None, :, None] * ramp[None, None, :], (3, size, size))
    return [(clean + rng.standard_normal((3, size, size)) * 0.1).astype(np.float32) for _ in range(count)]


def _quantize_scales(model: onnx.ModelProto) -> list[float]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"]


@pytest.mark.parametrize("float_tail_layers", [0, 1])
def test_the_simulation_computes_the_quantized_onnx_file(tmp_path: Path, float_tail_layers: int) -> None:
    sim = QuantSimDnCNN(_tiny(), float_tail_layers)
    crops = _noisy(6)
    sim.set_scales(activation_maxima(sim.model, crops) * 0.8)  # not ORT's own MinMax: must come from the file
    source, target = tmp_path / "tuned.onnx", tmp_path / "tuned.int8.onnx"
    write_float_model(sim, source, 3, "python -m training.dncnn.qat ...")
    keep = ("first", "last", "residual") + (("penultimate",) if float_tail_layers else ())
    excluded = quantize_model(source, target, crops, keep_float=keep)
    quantized = onnx.load(str(target))
    props = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    learned = json.loads(props[SCALES_KEY])
    assert props[COMMAND_KEY] == "python -m training.dncnn.qat ..." and len(learned) == 4
    assert np.allclose(_quantize_scales(quantized), learned[: len(learned) - float_tail_layers], rtol=1e-6)
    assert ("/body/body.2/conv/Conv" in excluded) is bool(float_tail_layers)

    x = _noisy(1, size=40, seed=5)[0][None]
    with torch.no_grad():
        simulated = sim(torch.from_numpy(x)).numpy()
        exact = sim.model(torch.from_numpy(x)).numpy()
    ort_int8 = run_onnx(target, x)
    int8_error = np.abs(ort_int8 - exact).max()
    assert int8_error > 1e-3  # the rounding is there
    assert np.abs(ort_int8 - simulated).max() < 0.1 * int8_error  # and the simulation is what ORT does


def test_penultimate_names_the_last_hidden_conv_and_its_relu(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    write_float_model(QuantSimDnCNN(_tiny()), path, 3, "")
    names = float_nodes(onnx.load(str(path)), ["penultimate"])
    assert names == ["/body/body.2/conv/Conv", "/body/body.2/relu/Relu"]


def _patches(count: int = 32, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 220, size)
    base = ramp[None, None, :, None] * ramp[None, None, None, ::-1] / 255 + rng.uniform(-20, 20, (count, 3, 1, 1))
    return np.clip(base, 0, 255).astype(np.uint8)


def _int8_error(sim: QuantSimDnCNN, teacher: DnCNN, crops: list[np.ndarray]) -> float:
    with torch.no_grad():
        x = torch.from_numpy(np.stack(crops))
        return float((sim(x) - teacher(x)).square().mean())


def test_fine_tuning_lowers_the_int8_error_and_resumes_exactly() -> None:
    torch.manual_seed(0)
    teacher = _tiny()
    cfg = QATConfig("tiny", steps=30, batch_size=4, patch=16, lr=1e-4, scale_lr=0.0, warmup=2, check_every=10, seed=0)
    patches, crops = _patches(), _noisy(4, size=16, seed=9)

    sim = QuantSimDnCNN(copy.deepcopy(teacher))
    sim.set_scales(activation_maxima(sim.model, crops))
    before = _int8_error(sim, teacher, crops)
    checks: list[int] = []
    state = fine_tune(sim, patches, 25.0, cfg, teacher=teacher, on_check=lambda step, _: checks.append(step))
    assert checks == [10, 20, 30] and state["step"] == 30
    assert _int8_error(sim, teacher, crops) < 0.8 * before

    cfg = QATConfig("tiny", 30, 4, 16, lr=1e-4, scale_lr=1e-2, warmup=2, check_every=10, seed=0)  # scales learn too

    # stopped by a signal at the check of step 10: the step in flight (11) finishes, then a last check
    half = QuantSimDnCNN(copy.deepcopy(teacher))
    half.set_scales(activation_maxima(half.model, crops))
    stop = threading.Event()
    partial = fine_tune(half, patches, 25.0, cfg, teacher=teacher, stop=stop, on_check=lambda *_: stop.set())
    assert partial["step"] == 11
    saved = copy.deepcopy({"sim": half.state_dict(), "state": partial})
    resumed = QuantSimDnCNN(copy.deepcopy(teacher))
    resumed.load_state_dict(saved["sim"])
    fine_tune(resumed, patches, 25.0, cfg, teacher=teacher, state=saved["state"])
    whole = QuantSimDnCNN(copy.deepcopy(teacher))
    whole.set_scales(activation_maxima(whole.model, crops))
    fine_tune(whole, patches, 25.0, cfg, teacher=teacher)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
