"""Which numeric precision each model runs in: float32, or its int8 variant where that pays.

An int8 variant (static QDQ, ``export.quantize``) is only faster where the CPU has an 8-bit dot
product instruction that ONNX Runtime's integer kernels use: VNNI (``avx512_vnni``, ``avx_vnni``),
AMX (``amx_int8``) on x86, ``asimddp`` (SDOT) on Arm. Without one (AVX2, AVX-512 without VNNI)
u8 x s8 products go through 16-bit intermediates: int8 gains little or loses, and each two
neighbouring products saturate at int16 (``export.int8_arithmetic``), so the file computes
something other than what its quality gates were measured with (the exact sums of a VNNI or AMX
CPU; docs/benchmarks.md gives the difference). On CUDA ORT's float kernels (and the fp16
variants) are the fast path. So ``auto`` picks int8 only on such a CPU, and only for a model whose
manifest entry lists an int8 variant. ``int8`` forces the variant wherever one exists (for
measuring), ``float32`` never uses it. A model without a variant always runs its float file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from service.manifest import ModelSpec

Precision = Literal["float32", "int8"]
PrecisionSetting = Literal["auto", "float32", "int8"]

#: /proc/cpuinfo flags of an 8-bit dot-product instruction ORT's int8 convolutions use.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def cpu_int8_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The INT8_DOT_FLAGS this CPU reports (``flags`` on x86, ``Features`` on Arm); empty if unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    found: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            found |= INT8_DOT_FLAGS & set(value.split())
    return frozenset(found)


def choose(setting: PrecisionSetting, spec: ModelSpec, *, provider: str, int8_flags: frozenset[str]) -> Precision:
    """The precision ``spec`` runs in on ``provider`` (the first one the session is asked for)."""
    if "int8" not in spec.variants or setting == "float32":
        return "float32"
    if setting == "int8":
        return "int8"
    return "int8" if provider == "CPUExecutionProvider" and int8_flags else "float32"


def at_precision(spec: ModelSpec, precision: Precision) -> ModelSpec:
    """``spec`` pointing at the file (and checksum) of ``precision``; the float spec for float32."""
    if precision == "float32":
        return spec
    variant = spec.variants[precision]
    return replace(spec, file=variant.file, sha256=variant.sha256)
