"""Which numeric precision each model runs in: float32, or its int8 variant where that pays.

An int8 variant (static QDQ, ``export.quantize``) is only faster where the CPU has an 8-bit dot
product instruction that ONNX Runtime's integer kernels use: VNNI (``avx512_vnni``, ``avx_vnni``),
AMX (``amx_int8``) on x86, ``asimddp`` (SDOT) on Arm. Without one (AVX2, AVX-512 without VNNI)
u8 x s8 products go through 16-bit intermediates: int8 gains little or loses, and ORT's kernels
add each two neighbouring products in saturating int16 (``export.int8_arithmetic``), which blanks
HED's int8 edge maps (docs/benchmarks.md). On CUDA ORT's float kernels (and the fp16 variants) are
the fast path. So ``auto`` picks int8 only on such a CPU, and only for a model whose manifest
entry lists an int8 variant. ``int8`` forces the variant wherever one exists (for measuring),
``float32`` never uses it. A model without a variant always runs its float file.

Wherever int8 runs on an x86 CPU without such an instruction, ``session_entries`` asks ORT for
u8 x u8 kernels instead (``session.x64quantprecision``: the weights shifted to uint8, exact sums,
slower), so an int8 file computes on every CPU the sums its quality gates were measured with.
"""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path
from typing import Literal

from service.manifest import ModelSpec

Precision = Literal["float32", "int8"]
PrecisionSetting = Literal["auto", "float32", "int8"]

#: /proc/cpuinfo flags of an 8-bit dot-product instruction ORT's int8 convolutions use.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
#: ORT's session entry for exact int8 sums on x86 (``kOrtSessionOptionsAvx2PrecisionMode``).
EXACT_INT8_ENTRY = ("session.x64quantprecision", "1")
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


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


def session_entries(int8_flags: frozenset[str], machine: str | None = None) -> dict[str, str]:
    """ORT session config entries for this CPU (``machine``: ``platform.machine()``):
    ``EXACT_INT8_ENTRY`` on x86 without an 8-bit dot product, else none. Not with VNNI or AMX: ORT
    applies the entry wherever its u8 x u8 and u8 x s8 kernel tables differ, which there moves int8
    convolutions off the VNNI kernels (exact already) onto slower u8 x u8 ones. Float files have
    nothing it changes."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() in _X86 and not int8_flags:
        return dict([EXACT_INT8_ENTRY])
    return {}


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
