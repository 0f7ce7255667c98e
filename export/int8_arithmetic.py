"""How ONNX Runtime adds the u8 x s8 products of an int8 convolution on this CPU, and that sum emulated.

ORT's CPU provider fuses each ``DequantizeLinear -> Conv -> QuantizeLinear`` of a QDQ file into
``QLinearConv``. With int8 weights of zero point 0 and at least 16 output channels, a multiple of
4 input channels and a multiple of 8 output channels (DnCNN's 64 -> 64) it runs MLAS's symmetric
convolution (``MlasConvSym``), otherwise (HED's 3-channel input, its 1-channel side outputs) an
im2col and MLAS's u8 x s8 GEMM. Both read the reduction in ORT's NHWC order (kernel row, kernel
column, channel; channel fastest) and both pick their kernel from the CPU (MLAS ``platform.cpp``,
onnxruntime 1.26):

===========================  ==============================================  ===========
x86-64 CPU                   u8 x s8 instructions (conv; GEMM)               products
===========================  ==============================================  ===========
SSE4, AVX without AVX2       no conv kernel; GEMM widens to int16, pmaddwd   exact
AVX2 without VNNI            vpmaddubsw + vpmaddwd (both)                    int16 pairs
AVX-512 BW without VNNI      vpmaddubsw + vpmaddwd (both)                    int16 pairs
AVX-VNNI, AVX-512 VNNI       vpdpbusds (both)                                exact
AMX-INT8                     vpdpbusds (AVX-512 VNNI); tdpbusd (AMX tiles)   exact
===========================  ==============================================  ===========

(Arm64 has its own kernels, not read here; ``ort_u8s8_arithmetic`` answers there too.)

``vpmaddubsw`` multiplies 32 u8 by 32 s8 and adds each two neighbouring products into one int16,
*saturating* at -32768 / 32767: two products of 255 x 127 (= 32385 each) lose 32,003. The int32
accumulation, the bias, and the requantization (``float(acc + bias) * (x_scale * w_scale /
y_scale)``, clipped, rounded half to even, plus the zero point) are the same on every path, so the
int16-pair paths differ from the others only where a pair saturates. ORT's quantization guide
names this U8S8 saturation and its remedies (7-bit weights with ``reduce_range``, or U8U8); the
session entry ``session.x64quantprecision=1`` makes ORT turn the weights into u8 and sum u8 x u8
exactly (slower); ``restore.core.cpu.session_entries`` sets it on x86 CPUs without VNNI or AMX.

``ort_u8s8_arithmetic`` finds the path by running ORT on a convolution built to saturate, rather
than from CPU flags, so it answers for the kernels this ORT build picks on this CPU, under an
emulator too (``qemu-x86_64 -cpu Haswell`` reports /proc/cpuinfo of the host but runs the AVX2
kernels). ``pair_excess`` computes what the saturation changes in each exact accumulator, for the
QAT simulation (``training.dncnn.qat``) and for counting it on real data (``bench.int8_saturation``).
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.session import cpu_session

__all__ = ["Arithmetic", "ARITHMETICS", "INT16_MIN", "INT16_MAX", "pair_excess", "ort_u8s8_arithmetic"]

#: ``exact``: every u8 x s8 product reaches the int32 accumulator; ``int16-pairs``: each two
#: neighbouring products are first added and saturated to int16 (AVX2, AVX-512 without VNNI).
Arithmetic = Literal["exact", "int16-pairs"]
ARITHMETICS: tuple[Arithmetic, ...] = get_args(Arithmetic)
INT16_MIN, INT16_MAX = -32768, 32767
_U8_MAX, _S8_MAX = 255, 127


def pair_excess(x_q: np.ndarray, w_q: np.ndarray, *, zero_point: int = 0, stride: int = 1,
                padding: int = 0, dilation: int = 1) -> np.ndarray:
    """Per output of ``conv2d(x_q, w_q)``, the sum over its product pairs of ``saturate_int16(pair)
    - pair``: what an int16-pair kernel adds to the exact accumulator (zero where no pair saturates).

    ``x_q`` (N, C, H, W) holds the raw uint8 values, ``w_q`` (O, C, kh, kw) the int8 ones; the
    result is (N, O, H', W') int64. Padding takes the input's zero point, as ORT pads. Pairs run
    along ORT's reduction order (kh, kw, C; C fastest; an odd length's last product pairs with a
    zero). A pair is only computed for output channels whose two weights can reach the limit
    (255 x (|w0| + |w1|) > 32767) and at positions whose two inputs can (x0 |w0| + x1 |w1| > 32767
    for the largest such weights): a small share of a trained network's products.
    """
    out_c, in_c, kh, kw = w_q.shape
    length = kh * kw * in_c
    weights = w_q.astype(np.int32).transpose(0, 2, 3, 1).reshape(out_c, length)
    weights = np.pad(weights, ((0, 0), (0, length % 2))).reshape(out_c, -1, 2)
    reach = np.abs(weights).sum(-1) * _U8_MAX > INT16_MAX  # (O, pairs)
    batch, _, height, width = x_q.shape
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    excess = np.zeros((batch, out_c, out_h, out_w), np.int64)
    edge = (padding, padding)
    padded = np.pad(x_q.astype(np.int32), ((0, 0), (0, 0), edge, edge), constant_values=zero_point)

    def tap(k: int) -> np.ndarray:
        """The input each output multiplies by reduction element ``k`` (N, H', W')."""
        if k >= length:
            return np.zeros((batch, out_h, out_w), np.int32)
        ky, rest = divmod(k, kw * in_c)
        kx, c = divmod(rest, in_c)
        top, left = ky * dilation, kx * dilation
        return padded[:, c, top: top + stride * (out_h - 1) + 1: stride, left: left + stride * (out_w - 1) + 1: stride]

    for p in np.nonzero(reach.any(0))[0]:
        channels = np.nonzero(reach[:, p])[0]
        w0, w1 = weights[channels, p, 0], weights[channels, p, 1]
        x0, x1 = tap(2 * p), tap(2 * p + 1)
        at = np.nonzero(x0 * np.abs(w0).max() + x1 * np.abs(w1).max() > INT16_MAX)
        if len(at[0]) == 0:
            continue
        sums = w0[:, None] * x0[at][None] + w1[:, None] * x1[at][None]  # (channels, positions)
        diff = np.clip(sums, INT16_MIN, INT16_MAX) - sums
        o, k = np.nonzero(diff)
        np.add.at(excess, (at[0][k], channels[o], at[1][k], at[2][k]), diff[o, k])
    return excess


def _probe_model(channels: int) -> onnx.ModelProto:
    """A QDQ 3x3 convolution, ``channels`` -> ``channels`` as ORT's quantizer writes it (uint8
    activations, per-channel symmetric int8 weights, int32 bias), whose input 1.0 is uint8 255 and
    whose weights are all 127: every pair of products is 64,770, twice the int16 limit. The output
    scale maps the exact centre accumulator to 250."""
    x_scale, w_scale = 1.0 / _U8_MAX, 1.0 / _S8_MAX
    exact = 9 * channels * _U8_MAX * _S8_MAX
    y_scale = x_scale * w_scale * exact / 250.0
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.full((channels, channels, 3, 3), _S8_MAX, np.int8), "w_q"),
        numpy_helper.from_array(np.full(channels, w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "w_zero"),
        numpy_helper.from_array(np.zeros(channels, np.int32), "b_q"),
        numpy_helper.from_array(np.full(channels, x_scale * w_scale, np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(channels, np.int32), "b_zero"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_u8"]),
        helper.make_node("DequantizeLinear", ["x_u8", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], axis=0),
        helper.make_node("Conv", ["x_dq", "w", "b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "y_scale", "x_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "u8s8_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, channels, 3, 3])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@functools.cache
def ort_u8s8_arithmetic(channels: int = 64) -> Arithmetic:
    """How ORT's CPU provider sums u8 x s8 products in a ``channels`` -> ``channels`` QDQ 3x3
    convolution on this CPU, found by running one whose every product pair saturates int16."""
    session = cpu_session(_probe_model(channels).SerializeToString(), 1, entries={})  # ORT's own kernels
    (y,) = session.run(None, {"x": np.ones((1, channels, 3, 3), np.float32)})
    centre = int(y[0, 0, 1, 1])
    length = 9 * channels
    saturated = (length // 2) * INT16_MAX + (length % 2) * _U8_MAX * _S8_MAX
    expected: dict[Arithmetic, int] = {
        "exact": 250, "int16-pairs": round(250 * saturated / (length * _U8_MAX * _S8_MAX)),
    }
    for arithmetic, value in expected.items():
        if abs(centre - value) <= 1:
            return arithmetic
    raise RuntimeError(f"ORT's int8 convolution gave {centre}, neither {expected}: an arithmetic this module does not know")
