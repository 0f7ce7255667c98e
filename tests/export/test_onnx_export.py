"""export/onnx_export.py: ORT parity, dynamic axes, float16 storage, state-dict mapping."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from export.onnx_export import (
    FP16_SUFFIX,
    ExportCheckError,
    export_onnx,
    max_abs_diff,
    onnx_initializers,
    round_weights_fp16,
    run_onnx,
    state_dict_from_onnx,
    store_initializers_fp16,
)
from models.dncnn import DnCNN
from restore.core.hashing import sha256_file


def _tiny(channels: int = 1) -> DnCNN:
    torch.manual_seed(0)
    return DnCNN(channels=channels, depth=4, features=8, batch_norm=False).eval()


@pytest.mark.parametrize("fp16_storage", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_export_parity_at_other_size(tmp_path: Path, channels: int, fp16_storage: bool) -> None:
    model = _tiny(channels)
    path = tmp_path / "m.onnx"
    diff = export_onnx(model, path, (1, channels, 16, 16), fp16_storage=fp16_storage)
    assert diff <= 1e-4
    # Independent check at yet another size and batch.
    x = np.random.default_rng(1).random((3, channels, 23, 9), dtype=np.float32)
    reference = round_weights_fp16(model) if fp16_storage else model
    with torch.inference_mode():
        expected = reference(torch.from_numpy(x)).numpy()
    assert max_abs_diff(run_onnx(path, x), expected) <= 1e-4


def test_graph_interface(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    export_onnx(_tiny(), path, (1, 1, 16, 16))
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]


def test_fp16_storage_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    model = _tiny()
    export_onnx(model, path, (1, 1, 16, 16))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.initializer
    assert all(i.data_type == TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert all(i.name.endswith(FP16_SUFFIX) for i in proto.graph.initializer)
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert len(casts) == len(proto.graph.initializer)
    arrays = onnx_initializers(proto)
    rounded = round_weights_fp16(model).state_dict()
    assert arrays.keys() == rounded.keys()
    for key, value in arrays.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, rounded[key].numpy())


def test_store_fp16_is_pure_and_rejects_overflow(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    export_onnx(_tiny(), path, (1, 1, 8, 8), fp16_storage=False)
    proto = onnx.load(str(path))
    before = proto.SerializeToString()
    rewritten = store_initializers_fp16(proto)
    assert proto.SerializeToString() == before
    onnx.checker.check_model(rewritten, full_check=True)
    proto.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(np.full((2,), 1e6, np.float32), proto.graph.initializer[0].name)
    )
    with pytest.raises(ValueError, match="float16 range"):
        store_initializers_fp16(proto)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    model = _tiny()
    export_onnx(model, path, (1, 1, 8, 8))
    rebuilt = DnCNN(channels=1, depth=4, features=8, batch_norm=False)
    rebuilt.load_state_dict(state_dict_from_onnx(onnx.load(str(path)), rebuilt.state_dict()))
    for key, value in round_weights_fp16(model).state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)
    wrong = DnCNN(channels=1, depth=5, features=8, batch_norm=False)
    with pytest.raises(KeyError):
        state_dict_from_onnx(onnx.load(str(path)), wrong.state_dict())


def test_failed_parity_raises(tmp_path: Path) -> None:
    with pytest.raises(ExportCheckError):
        export_onnx(_tiny(), tmp_path / "m.onnx", (1, 1, 8, 8), tolerance=-1.0)
    with pytest.raises(ValueError):
        export_onnx(_tiny(), tmp_path / "m.onnx", (1, 1, 8, 8), check_shape=(1, 1, 8, 8))


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
