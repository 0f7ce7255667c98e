"""What this CPU offers ONNX Runtime's int8 kernels, and the session entries that follow from it.

ORT's u8 x s8 convolutions sum their products exactly with an 8-bit dot-product instruction (VNNI
``avx512_vnni`` / ``avx_vnni``, AMX ``amx_int8`` on x86, SDOT ``asimddp`` on Arm). Without one, on
x86 (AVX2, AVX-512 without VNNI), its kernels add each two neighbouring products in saturating
int16 (``export.int8_arithmetic``), which blanks HED's int8 edge maps (docs/benchmarks.md).
``session.x64quantprecision=1`` makes ORT shift int8 weights to uint8 and sum u8 x u8 exactly
there (slower), so an int8 file computes the sums its quality gates were measured with on every
CPU. The service (``restore.service.inference``) and the evaluations (``export.session``) both
build their sessions with ``session_entries``, which is why it stands on this floor; it names
ORT's keys as plain strings and imports no ORT.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["INT8_DOT_FLAGS", "EXACT_INT8_ENTRY", "cpu_int8_flags", "session_entries"]

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
    """ORT session config entries for a CPU with ``int8_flags`` (``machine``: ``platform.machine()``):
    ``EXACT_INT8_ENTRY`` on x86 without an 8-bit dot product, else none. Not with VNNI or AMX: ORT
    applies the entry wherever its u8 x u8 and u8 x s8 kernel tables differ, which there moves int8
    convolutions off the VNNI kernels (exact already) onto slower u8 x u8 ones. Float files have
    nothing it changes."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() in _X86 and not int8_flags:
        return dict([EXACT_INT8_ENTRY])
    return {}
