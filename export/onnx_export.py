"""Export any ``nn.Module`` to ONNX with float16-stored weights, and prove the export is right.

The exported graph takes and returns float32 NCHW tensors named ``input`` / ``output`` with dynamic
batch, height and width; a conditioned model (``conditions=K``) also takes ``weather``, float32
``(N, K)`` one-hot rows, one per image of the batch. Weights are *stored* as float16, each followed by a ``Cast`` to float32, so
files are half the size while every operator still computes in float32 (ONNX Runtime folds the
casts once at session start). The export is not trusted until ONNX Runtime reproduces PyTorch
(run with the same float16-rounded weights) on an input of a size other than the one traced.

Why the legacy TorchScript exporter (``dynamo=False``): DnCNN-style fully convolutional graphs
export exactly with it, it needs no ``onnxscript`` (not a project dependency) and it keeps the
``state_dict`` names as initializer names, which ``state_dict_from_onnx`` relies on. Its
deprecation warnings are silenced inside ``export_onnx`` only, so they never reach callers (the
test suite turns warnings into errors).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

__all__ = [
    "OPSET",
    "FP16_SUFFIX",
    "ExportCheckError",
    "export_onnx",
    "store_initializers_fp16",
    "with_symbolic_shapes",
    "round_weights_fp16",
    "onnx_initializers",
    "state_dict_from_onnx",
    "run_onnx",
    "max_abs_diff",
    "CONDITION_NAME",
]

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
CONDITION_NAME = "weather"
FP16_SUFFIX = "__fp16"
DEFAULT_TOLERANCE = 1e-4
_DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


class ExportCheckError(RuntimeError):
    """The exported ONNX graph does not reproduce the PyTorch model."""


def store_initializers_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite float32 initializers as float16 + ``Cast(to=FLOAT)``; returns a new model.

    Each initializer ``w`` becomes ``w__fp16`` (float16) and a Cast node at the top of the graph
    produces ``w`` again, so no consumer changes. Values outside the float16 range would overflow
    to inf silently: refuse them instead.
    """
    out = copy.deepcopy(model)
    graph = out.graph
    casts: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            new_inits.append(init)
            continue
        values = numpy_helper.to_array(init)
        if values.size and np.abs(values).max() > np.finfo(np.float16).max:
            raise ValueError(f"initializer {init.name!r} exceeds the float16 range")
        stored = numpy_helper.from_array(values.astype(np.float16), name=init.name + FP16_SUFFIX)
        new_inits.append(stored)
        casts.append(
            helper.make_node(
                "Cast", [stored.name], [init.name], to=TensorProto.FLOAT, name=f"cast_{init.name}"
            )
        )
    # Old IR versions list initializers as graph inputs too; those would now be dangling.
    cast_outputs = {node.output[0] for node in casts}
    kept_inputs = [inp for inp in graph.input if inp.name not in cast_outputs]
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del graph.input[:]
    graph.input.extend(kept_inputs)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def with_symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every intermediate tensor's shape written out in terms of ``height`` and
    ``width`` (ONNX Runtime's symbolic shape inference); returns a new model.

    Why: ONNX Runtime's blocked (NCHWc) CPU layout keeps an element-wise ``Mul`` or ``Add`` in that
    layout only when it can prove both inputs have the same shape; with dynamic sides and no shapes
    in the file, a 3x3 convolution's output cannot be shown equal to its input's, so each such op
    is sent back to plain NCHW and forth again. The computation is unchanged.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # noqa: PLC0415 (pulls in sympy; only dynamic shapes need it)

    inferred = SymbolicShapeInference.infer_shapes(copy.deepcopy(model), auto_merge=True)
    if inferred is None:
        raise ExportCheckError("symbolic shape inference failed")
    return inferred


def round_weights_fp16(module: nn.Module) -> nn.Module:
    """Copy of ``module`` whose float parameters and buffers are rounded through float16.

    This is the PyTorch twin of ``store_initializers_fp16``: comparing against it isolates export
    errors from the (intended) storage rounding.
    """
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for tensor in list(twin.parameters()) + list(twin.buffers()):
            if tensor.dtype == torch.float32:
                tensor.copy_(tensor.half().float())
    return twin


def onnx_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers as float32 arrays under their original names (undoing the fp16 storage)."""
    arrays: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        name = init.name.removesuffix(FP16_SUFFIX)
        values = numpy_helper.to_array(init)
        if values.dtype == np.float16:
            values = values.astype(np.float32)
        if name in arrays:
            raise ValueError(f"initializer {name!r} stored twice")
        arrays[name] = values
    return arrays


def state_dict_from_onnx(
    model: onnx.ModelProto, reference: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map ONNX initializers back onto the keys of ``reference`` (a module's ``state_dict``).

    The exporter names initializers after ``state_dict`` keys, so the mapping is by name; any
    missing key or shape mismatch raises (e.g. a graph where BatchNorm was folded away).
    """
    arrays = onnx_initializers(model)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in reference.items():
        if key not in arrays:
            raise KeyError(f"state_dict key {key!r} has no ONNX initializer")
        value = arrays[key]
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(
                f"{key!r}: ONNX shape {value.shape} != model shape {tuple(tensor.shape)}"
            )
        state[key] = torch.from_numpy(value.copy()).to(tensor.dtype)
    return state


def run_onnx(path: str | Path, x: np.ndarray, threads: int = 2, condition: np.ndarray | None = None) -> np.ndarray:
    """Run an exported model once on CPU with ONNX Runtime (``condition``: its ``weather`` rows)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {INPUT_NAME: x.astype(np.float32, copy=False)}
    if condition is not None:
        feeds[CONDITION_NAME] = condition.astype(np.float32, copy=False)
    (y,) = session.run([OUTPUT_NAME], feeds)
    return np.asarray(y)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element difference; shapes must agree."""
    if a.shape != b.shape:
        raise ExportCheckError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _torch_forward(module: nn.Module, x: np.ndarray, condition: np.ndarray | None = None) -> np.ndarray:
    with torch.inference_mode():
        if condition is None:
            return module(torch.from_numpy(x)).numpy()
        return module(torch.from_numpy(x), torch.from_numpy(condition)).numpy()


def _one_hot_rows(n: int, k: int, seed: int) -> np.ndarray:
    """``n`` one-hot rows of width ``k``, cycling through the labels from a seeded start."""
    start = int(np.random.default_rng(seed).integers(k))
    return np.eye(k, dtype=np.float32)[[(start + i) % k for i in range(n)]]


def export_onnx(
    module: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    *,
    check_shape: Sequence[int] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    fp16_storage: bool = True,
    symbolic_shapes: bool = False,
    seed: int = 0,
    conditions: int = 0,
) -> float:
    """Export ``module`` (eval mode) to ``path`` and verify it; returns the max abs difference.

    Args:
        module: any single-input, single-output float32 NCHW model.
        path: destination ``.onnx`` file (parent directories are created).
        input_shape: NCHW shape used for tracing.
        check_shape: NCHW shape of the verification input; defaults to ``input_shape`` with height
            and width changed by an odd amount, so dynamic axes are actually exercised.
        tolerance: largest accepted |ORT - PyTorch|.
        fp16_storage: store initializers as float16 (see module docstring).
        symbolic_shapes: write every tensor's shape into the file (``with_symbolic_shapes``).
        seed: seed of the random verification input.
        conditions: width of the ``weather`` one-hot input of a conditioned model (0: none); the
            check then feeds a different label per image.

    Raises:
        ExportCheckError: ORT output deviates by more than ``tolerance``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = copy.deepcopy(module).eval().float()
    n, c, h, w = (int(v) for v in input_shape)
    if check_shape is None:
        check_shape = (n + 1, c, h + 7, w + 13)
    if tuple(check_shape) == tuple(input_shape):
        raise ValueError("check_shape must differ from input_shape to test the dynamic axes")

    dummy = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    inputs: tuple[torch.Tensor, ...] = (dummy,)
    names, axes = [INPUT_NAME], {INPUT_NAME: _DYNAMIC_AXES, OUTPUT_NAME: _DYNAMIC_AXES}
    if conditions:
        inputs += (torch.from_numpy(_one_hot_rows(n, conditions, seed)),)
        names.append(CONDITION_NAME)
        axes[CONDITION_NAME] = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    if fp16_storage:
        proto = store_initializers_fp16(proto)
        reference = round_weights_fp16(module)
    else:
        reference = module
    if symbolic_shapes:
        proto = with_symbolic_shapes(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))

    x = np.random.default_rng(seed).random(tuple(check_shape), dtype=np.float32)
    condition = _one_hot_rows(x.shape[0], conditions, seed + 1) if conditions else None
    diff = max_abs_diff(run_onnx(path, x, condition=condition), _torch_forward(reference, x, condition))
    if not diff <= tolerance:  # also catches NaN
        raise ExportCheckError(f"{path}: ORT vs PyTorch max abs diff {diff:.3g} > {tolerance:g}")
    return diff
