"""Which numeric precision each model runs in: float32, or its int8 variant where that pays.

An int8 variant (static QDQ, ``export.quantize``) is only faster where the CPU has an 8-bit dot
product instruction that ONNX Runtime's integer kernels use (``restore.core.cpu.cpu_int8_flags``:
VNNI, AMX on x86, SDOT on Arm). Without one (AVX2, AVX-512 without VNNI) u8 x s8 products go
through 16-bit intermediates: int8 gains little or loses, and ORT's kernels add each two
neighbouring products in saturating int16, which blanks HED's int8 edge maps
(docs/benchmarks.md). On CUDA ORT's float kernels (and the fp16 variants) are the fast path. So
``auto`` picks int8 only on such a CPU, and only for a model whose manifest entry lists an int8
variant. ``int8`` forces the variant wherever one exists (for measuring), ``float32`` never uses
it. A model without a variant always runs its float file.

Wherever int8 is forced on an x86 CPU without such an instruction, the sessions carry
``restore.core.cpu.session_entries`` (``session.x64quantprecision``: exact u8 x u8 sums, slower),
so an int8 file computes on every CPU the sums its quality gates were measured with.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from restore.core.manifest import ModelSpec

Precision = Literal["float32", "int8"]
PrecisionSetting = Literal["auto", "float32", "int8"]


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
