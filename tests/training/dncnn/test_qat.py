"""training/dncnn/qat.py: the int8 simulation computes what ONNX Runtime's QDQ file computes (on
this CPU's path, under qemu on an AVX2 and a pre-AVX2 CPU, and with the service's session entry
for exact sums), the learned scales reach that file, fine-tuning lowers the int8 error on either
arithmetic, and a run resumes exactly."""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.int8_arithmetic import ARITHMETICS, Arithmetic, ort_u8s8_arithmetic
from export.quantize import COMMAND_KEY, SCALES_KEY, float_nodes, quantize_model
from export.session import cpu_session
from models.dncnn import DnCNN
from restore.core.cpu import EXACT_INT8_ENTRY
from training.dncnn.qat import QATConfig, QuantSimDnCNN, activation_maxima, fine_tune, write_float_model

ROOT = Path(__file__).resolve().parents[3]


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


def _quantized_tiny(tmp_path: Path, float_tail_layers: int) -> tuple[QuantSimDnCNN, Path, list[str]]:
    """The tiny model's simulation (activation scales not ORT's MinMax, so they must come from the
    file) and its int8 QDQ file; returns the nodes left float too."""
    sim = QuantSimDnCNN(_tiny(), float_tail_layers, "exact")
    crops = _noisy(6)
    sim.set_scales(activation_maxima(sim.model, crops) * 0.8)
    source, target = tmp_path / "tuned.onnx", tmp_path / "tuned.int8.onnx"
    write_float_model(sim, source, 3, "python -m training.dncnn.qat ...")
    keep = ("first", "last", "residual") + (("penultimate",) if float_tail_layers else ())
    return sim, target, quantize_model(source, target, crops, keep_float=keep)


def _simulated(sim: QuantSimDnCNN, x: np.ndarray) -> dict[str, np.ndarray]:
    """``sim``'s output with each arithmetic, and the float model's (key ``float``)."""
    outputs = {}
    with torch.no_grad():
        for arithmetic in ARITHMETICS:
            sim.arithmetic = arithmetic
            outputs[arithmetic] = sim(torch.from_numpy(x)).numpy()
        outputs["float"] = sim.model(torch.from_numpy(x)).numpy()
    return outputs


def _check_path(ort_int8: np.ndarray, simulated: dict[str, np.ndarray], arithmetic: str, distinct: bool) -> None:
    """ORT's output is the simulation of ``arithmetic`` to a tenth of the int8 error, and (where
    ``distinct``) not the other one's: the test input saturates int16 pairs, so it tells them apart."""
    int8_error = np.abs(ort_int8 - simulated["float"]).max()
    off = {a: float(np.abs(ort_int8 - simulated[a]).max()) for a in ARITHMETICS}
    assert int8_error > 1e-3  # the rounding is there
    assert off[arithmetic] < 0.1 * int8_error, f"ORT's {arithmetic} path: {off}, int8 error {int8_error}"
    if distinct:
        assert all(off[a] > 0.1 * int8_error for a in ARITHMETICS if a != arithmetic), off


def _run(path: Path, x: np.ndarray, entries: dict[str, str]) -> np.ndarray:
    """``path`` on ``x`` in an ORT session with exactly these config entries (none: ORT's own choice)."""
    return cpu_session(path, 1, entries).run(None, {"input": x})[0]


@pytest.mark.parametrize("float_tail_layers,distinct", [(0, True), (1, False)])
def test_the_simulation_computes_the_quantized_onnx_file(tmp_path: Path, float_tail_layers: int, distinct: bool) -> None:
    """On the path a plain ORT session takes on this CPU (exact sums with VNNI or AMX, int16 pairs
    on AVX2 or AVX-512 without VNNI), named in the failure message, and with the service's session
    entry, exact on every CPU. With the penultimate layer float only two convolutions stay int8
    and their few saturated pairs move the output less than the tolerance (``distinct`` False)."""
    sim, target, excluded = _quantized_tiny(tmp_path, float_tail_layers)
    quantized = onnx.load(str(target))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "tuned.onnx")).metadata_props}
    learned = json.loads(props[SCALES_KEY])
    assert props[COMMAND_KEY] == "python -m training.dncnn.qat ..." and len(learned) == 4
    assert np.allclose(_quantize_scales(quantized), learned[: len(learned) - float_tail_layers], rtol=1e-6)
    assert ("/body/body.2/conv/Conv" in excluded) is bool(float_tail_layers)

    x = _noisy(1, size=40, seed=5)[0][None]
    simulated = _simulated(sim, x)
    _check_path(_run(target, x, {}), simulated, ort_u8s8_arithmetic(16), distinct)
    _check_path(_run(target, x, dict([EXACT_INT8_ENTRY])), simulated, "exact", distinct)


#: CPUs qemu's TCG runs (it has no AVX-512), each with the sums ORT takes there.
EMULATED = [("Haswell", "int16-pairs"), ("SandyBridge", "exact")]  # AVX2 without VNNI; AVX, no AVX2
_UNDER_QEMU = """
import sys
import numpy as np
from export.int8_arithmetic import ort_u8s8_arithmetic
from export.session import cpu_session
model, inputs, plain, entered, key, value = sys.argv[1:]
for path, entries in ((plain, {}), (entered, {key: value})):
    np.save(path, cpu_session(model, 1, entries).run(None, {"input": np.load(inputs)})[0])
print(ort_u8s8_arithmetic(16))
"""


def _qemu() -> str:
    """qemu-x86_64's path on an x86-64 host; skips without one (fails under REQUIRE_QEMU=1)."""
    qemu = shutil.which("qemu-x86_64")
    if platform.machine() in ("x86_64", "AMD64") and qemu:
        return qemu
    reason = f"needs qemu-x86_64 (Debian qemu-user) on an x86-64 host; this is {platform.machine()}, qemu {qemu}"
    if os.environ.get("REQUIRE_QEMU") == "1":
        pytest.fail(f"REQUIRE_QEMU=1 but {reason}")
    pytest.skip(f"{reason}: the path of this CPU is checked by test_the_simulation_computes_the_quantized_onnx_file")


@pytest.mark.slow  # minutes: ORT starts under an emulator
@pytest.mark.parametrize("cpu,arithmetic", EMULATED)
def test_the_simulation_computes_the_quantized_onnx_file_on_an_emulated_cpu(
    tmp_path: Path, cpu: str, arithmetic: str
) -> None:
    """The paths this CPU does not take: ORT run under ``qemu-x86_64 -cpu <cpu>`` (its MLAS picks
    kernels by CPUID, which qemu answers for the emulated CPU) names the sums the ISA implies and
    computes what the simulation of those sums computes here; with the service's session entry
    it computes the exact sums there too."""
    qemu = _qemu()
    sim, target, _ = _quantized_tiny(tmp_path, 0)
    x = _noisy(1, size=40, seed=5)[0][None]
    np.save(tmp_path / "x.npy", x)
    plain, entered = tmp_path / "plain.npy", tmp_path / "entered.npy"
    done = subprocess.run(
        [qemu, "-cpu", cpu, sys.executable, "-c", _UNDER_QEMU, str(target), str(tmp_path / "x.npy"), str(plain), str(entered),
         *EXACT_INT8_ENTRY],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == arithmetic
    simulated = _simulated(sim, x)
    _check_path(np.load(plain), simulated, arithmetic, True)
    _check_path(np.load(entered), simulated, "exact", True)


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


# int16-pairs (a plain ORT session's sums on AVX2; never served) only in make test-all: 20 s each
@pytest.mark.parametrize("arithmetic", [pytest.param(a, marks=[pytest.mark.slow] if a != "exact" else []) for a in ARITHMETICS])
def test_fine_tuning_lowers_the_int8_error_and_resumes_exactly(arithmetic: Arithmetic) -> None:
    """On either arithmetic: exact, as every CPU computes int8 when served; int16-pairs, as ORT's
    AVX2 kernels sum without the service's session entry."""
    torch.manual_seed(0)
    teacher = _tiny()
    cfg = QATConfig("tiny", steps=30, batch_size=4, patch=16, lr=1e-4, scale_lr=0.0, warmup=2, check_every=10, seed=0,
                    arithmetic=arithmetic)
    patches, crops = _patches(), _noisy(4, size=16, seed=9)

    sim = QuantSimDnCNN(copy.deepcopy(teacher), arithmetic=arithmetic)
    sim.set_scales(activation_maxima(sim.model, crops))
    before = _int8_error(sim, teacher, crops)
    checks: list[int] = []
    state = fine_tune(sim, patches, 25.0, cfg, teacher=teacher, on_check=lambda step, _: checks.append(step))
    assert checks == [10, 20, 30] and state["step"] == 30
    assert _int8_error(sim, teacher, crops) < 0.8 * before

    cfg = QATConfig("tiny", 30, 4, 16, lr=1e-4, scale_lr=1e-2, warmup=2, check_every=10, seed=0,
                    arithmetic=arithmetic)  # scales learn too

    # stopped by a signal at the check of step 10: the step in flight (11) finishes, then a last check
    half = QuantSimDnCNN(copy.deepcopy(teacher), arithmetic=arithmetic)
    half.set_scales(activation_maxima(half.model, crops))
    stop = threading.Event()
    partial = fine_tune(half, patches, 25.0, cfg, teacher=teacher, stop=stop, on_check=lambda *_: stop.set())
    assert partial["step"] == 11
    saved = copy.deepcopy({"sim": half.state_dict(), "state": partial})
    resumed = QuantSimDnCNN(copy.deepcopy(teacher), arithmetic=arithmetic)
    resumed.load_state_dict(saved["sim"])
    fine_tune(resumed, patches, 25.0, cfg, teacher=teacher, state=saved["state"])
    whole = QuantSimDnCNN(copy.deepcopy(teacher), arithmetic=arithmetic)
    whole.set_scales(activation_maxima(whole.model, crops))
    fine_tune(whole, patches, 25.0, cfg, teacher=teacher)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
