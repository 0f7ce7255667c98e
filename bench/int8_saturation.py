"""Where ORT's int16-pair u8 x s8 sums (AVX2, AVX-512 without VNNI) change the shipped int8 variants.

The service does not compute them (on such a CPU its sessions ask for exact sums:
``restore.core.cpu.session_entries``); a plain ORT session given the file does.

    python -m bench.int8_saturation --data ../shared/data [--models NAME ...] [--limit N] [--crop PX]
        [--no-count] [--exact-entry]

For each int8 variant in models/onnx/manifest.json, its test images go through the int8 file here
(the evaluation's inputs: a denoiser's noisy BSD68 / Set12 / CBSD68 images at its sigma, HED's clean
BSDS500 test images) with the uint8 input of every quantized convolution read back. Each such
input and the convolution's int8 weights go through ``export.int8_arithmetic.pair_excess``: an
output whose excess is non-zero is one whose int32 accumulator the int16-pair path computes
differently from the exact one (VNNI, AMX), the only step where the paths differ. Where no output
changes, an AVX2 CPU computes the same activations, bit for bit, as a VNNI one, so the variant's
quality gate holds there unchanged; the count is of first changes (where one occurs, later layers
see other inputs than the ones read back here).

Each row also gives what ORT computed on this CPU: a denoiser's mean PSNR (the evaluation's
protocol) or HED's mean fused edge probability, and a digest of every uint8 activation. Running
the same command under ``qemu-x86_64 -cpu Haswell`` (``--no-count``: only ORT runs, slowly;
``--crop``: centre crops, to keep it minutes) gives the AVX2 path's; equal digests mean equal
integer activations. ``--exact-entry`` gives ORT the service's session entry for exact sums
(``restore.core.cpu.EXACT_INT8_ENTRY``) whatever this CPU is. For a denoiser the row adds
the float32 file's PSNR and the int8 PSNR of both paths as ``training.dncnn.qat.QuantSimDnCNN``
computes them from the int8 file's weights, biases and scales (it computes ORT's uint8
activations exactly on either path: tests/training/dncnn/test_qat.py), so the quality gate
(int8 - float32 >= -0.05 dB) is measured for the int16-pair path on the whole test sets here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from PIL import Image

from export.dncnn import dncnn_from_onnx
from export.int8_arithmetic import ARITHMETICS, Arithmetic, ort_u8s8_arithmetic, pair_excess
from export.session import cpu_session
from restore.core.cpu import EXACT_INT8_ENTRY, cpu_int8_flags
from restore.core.metrics import psnr
from restore.core.pixels import to_pixels
from training.dncnn.evaluate import COLOR_SETS, GRAY_SETS, add_noise, make_session, noise_rng
from training.dncnn.images import load_set
from training.dncnn.qat import QuantSimDnCNN

MODELS = Path(__file__).resolve().parents[1] / "models" / "onnx"


@dataclass(frozen=True)
class QuantizedConv:
    """One ``DequantizeLinear -> Conv`` of a QDQ file, as ORT's integer kernel sees it."""

    name: str
    input: str  # the uint8 tensor
    zero_point: int
    weights: np.ndarray  # int8 (O, C, kh, kw), zero point 0
    stride: int
    padding: int
    dilation: int


def quantized_convs(model: onnx.ModelProto) -> list[QuantizedConv]:
    """Every convolution whose input and weights come from ``DequantizeLinear`` (ORT's QLinearConv)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    convs = []
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        data, weight = (producer.get(name) for name in node.input[:2])
        if any(n is None or n.op_type != "DequantizeLinear" for n in (data, weight)):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        pads, strides, dilations = attrs.get("pads", [0] * 4), attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
        if len(set(pads)) != 1 or len(set(strides)) != 1 or len(set(dilations)) != 1 or attrs.get("group", 1) != 1:
            raise ValueError(f"{node.name}: only square, ungrouped convolutions are counted")
        if inits[weight.input[0]].dtype != np.int8 or (len(weight.input) > 2 and np.any(inits[weight.input[2]])):
            raise ValueError(f"{node.name}: weights are not symmetric int8")
        zero_point = int(inits[data.input[2]]) if len(data.input) > 2 else 0
        convs.append(QuantizedConv(node.name, data.input[0], zero_point, inits[weight.input[0]], strides[0], pads[0], dilations[0]))
    return convs


def session_reading_back(model: onnx.ModelProto, tensors: Sequence[str], entries: dict[str, str]) -> ort.InferenceSession:
    """A CPU session of ``model`` that also returns ``tensors`` (outputs after the model's own)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    for name in dict.fromkeys(tensors):
        exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    return cpu_session(exposed.SerializeToString(), 2, entries)


def simulation(entry: dict, model: onnx.ModelProto, arithmetic: Arithmetic) -> QuantSimDnCNN:
    """The denoiser's int8 file as ``QuantSimDnCNN`` computes it: the float file's network with the
    int8 file's dequantized weights and biases and its activation scales."""
    net = dncnn_from_onnx(onnx.load(str(MODELS / entry["file"]))).float()
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    layers = [net.head.conv, *(layer.conv for layer in net.body), net.tail]
    for node, layer in zip((n for n in model.graph.node if n.op_type == "Conv"), layers, strict=True):
        for param, name in zip((layer.weight, layer.bias), node.input[1:3]):
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                value = inits[dq.input[0]].astype(np.float32)
                scale = inits[dq.input[1]].reshape((-1,) + (1,) * (value.ndim - 1))
                param.data = torch.from_numpy(value * scale)
    scales = [float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"]
    sim = QuantSimDnCNN(net, len(net.body) + 1 - len(scales), arithmetic).eval()
    with torch.no_grad():
        sim.log_scales[: len(scales)] = torch.tensor(scales).log()
    return sim


def _centre(image: np.ndarray, crop: int | None) -> np.ndarray:
    if crop is None:
        return image
    top, left = max(0, (image.shape[0] - crop) // 2), max(0, (image.shape[1] - crop) // 2)
    return image[top:top + crop, left:left + crop]


def test_inputs(
    entry: dict, data: Path, limit: int | None, crop: int | None = None,
) -> Iterator[tuple[str, list[tuple[np.ndarray, np.ndarray | None]]]]:
    """(set name, [(NCHW float32 input, clean uint8 image or None)]) as the variant's evaluation
    feeds it (the noise drawn for the whole image, then ``crop``)."""
    if entry["task"] == "edges":
        files = sorted((data / "bsds500" / "images" / "test").glob("*.jpg"))[:limit]
        rgb = [_centre(np.asarray(Image.open(f).convert("RGB")), crop) for f in files]
        yield "BSDS500 test", [(np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32) / 255, None) for x in rgb]
        return
    sigma = entry["sigma"] or 25
    for name in GRAY_SETS if entry["channels"] == 1 else COLOR_SETS:
        images = load_set(data / "denoise" / name, entry["channels"], limit)
        pairs = []
        for filename, clean in images:
            noisy = _centre(add_noise(clean, sigma, noise_rng(name, filename, sigma)), crop)
            x = noisy[None, None] if noisy.ndim == 2 else noisy.transpose(2, 0, 1)[None]
            pairs.append((np.ascontiguousarray(x), _centre(clean, crop)))
        yield f"{name} sigma {sigma}", pairs


def measure(entry: dict, model: onnx.ModelProto, args: argparse.Namespace) -> Iterator[str]:
    """One markdown row per test set of ``entry``'s int8 variant."""
    count = not args.no_count
    convs = quantized_convs(model)
    session = session_reading_back(model, [c.input for c in convs], dict([EXACT_INT8_ENTRY]) if args.exact_entry else {})
    first = len(model.graph.output)
    index = {name: first + k for k, name in enumerate(dict.fromkeys(c.input for c in convs))}
    denoiser = entry["task"] == "denoise" and count
    float32 = make_session(MODELS / entry["file"]) if denoiser else None
    sims = {a: simulation(entry, model, a) for a in ARITHMETICS} if denoiser else {}
    for set_name, pairs in test_inputs(entry, args.data, args.limit, args.crop):
        digest, scores, changed, total, layers = hashlib.sha256(), [], 0, 0, set()
        others: dict[str, list[float]] = {key: [] for key in ("float32", *sims)}
        for x, clean in pairs:
            outputs = session.run(None, {"input": x})
            for k in sorted(set(index.values())):
                digest.update(outputs[k].tobytes())
            scores.append(_score(outputs[0], clean))
            total += sum(int(np.prod(_out_shape(outputs[index[c.input]].shape, c))) for c in convs)
            for conv in convs if count else []:
                moved = np.count_nonzero(pair_excess(outputs[index[conv.input]], conv.weights, zero_point=conv.zero_point,
                                                     stride=conv.stride, padding=conv.padding, dilation=conv.dilation))
                changed += int(moved)
                layers |= {conv.name} if moved else set()
            if float32 is not None:
                others["float32"].append(_score(float32.run(None, {"input": x})[0], clean))
                with torch.no_grad():
                    for arithmetic, sim in sims.items():
                        others[arithmetic].append(_score(sim(torch.from_numpy(x)).numpy(), clean))
        counted = f"{changed} / {total} ({changed / total:.1e}) | {len(layers)} of {len(convs)}" if count else "- | -"
        if entry["task"] == "denoise":
            mean = {key: float(np.mean(values)) for key, values in others.items() if values}
            gate = (f" | {mean['float32']:.4f} | {mean['exact']:.4f} ({mean['exact'] - mean['float32']:+.4f}) | "
                    f"{mean['int16-pairs']:.4f} ({mean['int16-pairs'] - mean['float32']:+.4f})") if mean else " | - | - | -"
            yield f"| {entry['name']} | {set_name} | {len(pairs)} | {counted} | {np.mean(scores):.4f}{gate} | {digest.hexdigest()[:12]} |"
        else:
            yield f"| {entry['name']} | {set_name} | {len(pairs)} | {counted} | {np.mean(scores):.5f} | - | - | - | {digest.hexdigest()[:12]} |"


def _score(output: np.ndarray, clean: np.ndarray | None) -> float:
    """A denoiser's PSNR against ``clean`` (8-bit rounded), else the mean fused edge probability."""
    out = output[0]
    if clean is None:
        return float(out[0].mean())
    return psnr(to_pixels(out[0] if out.shape[0] == 1 else out.transpose(1, 2, 0)), clean)


def _out_shape(shape: tuple[int, ...], conv: QuantizedConv) -> tuple[int, ...]:
    out_c, _, kh, kw = conv.weights.shape
    size = [(n + 2 * conv.padding - conv.dilation * (k - 1) - 1) // conv.stride + 1 for n, k in zip(shape[2:], (kh, kw))]
    return (shape[0], out_c, *size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="../shared/data")
    parser.add_argument("--models", nargs="*", help="default: every model with an int8 variant")
    parser.add_argument("--limit", type=int, help="first N images per set")
    parser.add_argument("--crop", type=int, help="centre crops of this side (a multiple of 16 for HED)")
    parser.add_argument("--no-count", action="store_true", help="only run ORT (under an emulator)")
    parser.add_argument("--exact-entry", action="store_true", help="ORT sessions with the service's entry for exact sums")
    args = parser.parse_args(argv)
    entries = [e for e in json.loads((MODELS / "manifest.json").read_text())["models"] if "int8" in e.get("variants", {})]
    entries = [e for e in entries if not args.models or e["name"] in args.models]
    print(f"# {platform.machine()}, /proc/cpuinfo int8 flags {sorted(cpu_int8_flags()) or 'none'}, "
          f"ORT {ort.__version__} u8 x s8 sums here: {ort_u8s8_arithmetic()}; session entries: "
          f"{dict([EXACT_INT8_ENTRY]) if args.exact_entry else 'none'}; crop {args.crop or 'none'}")
    print("| model | set | images | outputs the int16-pair path changes | convolutions with any | ORT int8 here "
          "| float32 dB | exact sums, simulated dB (vs float32) | int16 pairs, simulated dB (vs float32) | uint8 digest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for entry in entries:
        model = onnx.load(str(MODELS / entry["variants"]["int8"]["file"]))
        for row in measure(entry, model, args):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
