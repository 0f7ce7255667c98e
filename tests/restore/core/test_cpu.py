"""restore.core.cpu: the 8-bit dot-product flags read from /proc/cpuinfo for each kind of CPU ORT's
int8 kernels tell apart (export.int8_arithmetic), and the session entry for exact int8 sums
where a CPU has none (the choice of precision per CPU: tests/restore/service/inference/test_precision.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from restore.core import cpu

ARM = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp"
_X86 = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat clflush mmx fxsr sse sse2 ht syscall nx lm"
_AVX2 = f"{_X86} pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand bmi1 avx2 bmi2"
_AVX512 = f"{_AVX2} avx512f avx512dq avx512cd avx512bw avx512vl"
#: /proc/cpuinfo flags (x86) or Features (Arm) of each kind of CPU, the 8-bit dot-product flags
#: found, and whether ORT's sessions there carry EXACT_INT8_ENTRY.
ISAS = {
    # vpmaddubsw: u8 x s8 products added in saturating int16 pairs: exact u8 x u8 sums asked of ORT
    "AVX2 (Haswell, AMD Zen 2/3)": ("flags", _AVX2, set(), True),
    "AVX-512 without VNNI (Skylake-SP)": ("flags", _AVX512, set(), True),
    # vpdpbusds / AMX tiles: exact int32 sums, the arithmetic the variants' quality gates were measured with
    "AVX-VNNI without AVX-512 (Alder Lake)": ("flags", f"{_AVX2} avx_vnni", {"avx_vnni"}, False),
    "AVX-512 VNNI (Cascade Lake, AMD Zen 4)": ("flags", f"{_AVX512} avx512_vnni", {"avx512_vnni"}, False),
    "AMX (Sapphire Rapids)": (
        "flags", f"{_AVX512} avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8", {"avx512_vnni", "avx_vnni", "amx_int8"}, False,
    ),
    # Arm's SDOT kernels are exact; the entry is x86's only
    "Arm with SDOT (Neoverse N1)": ("Features", ARM, {"asimddp"}, False),
    "Arm without SDOT (Cortex-A72)": ("Features", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", set(), False),
}


def write_cpuinfo(tmp_path: Path, isa: str) -> Path:
    """A two-processor /proc/cpuinfo of ``isa`` (a key of ``ISAS``)."""
    key, flags, _, _ = ISAS[isa]
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n")
    return path


@pytest.mark.parametrize("isa", ISAS)
def test_each_cpu_s_dot_product_flags_and_session_entries(tmp_path: Path, isa: str) -> None:
    key, _, dot_flags, exact_entry = ISAS[isa]
    found = cpu.cpu_int8_flags(write_cpuinfo(tmp_path, isa))
    assert found == dot_flags
    machine = "x86_64" if key == "flags" else "aarch64"
    assert cpu.session_entries(found, machine) == ({"session.x64quantprecision": "1"} if exact_entry else {})


def test_cpu_int8_flags_is_empty_when_cpuinfo_cannot_be_read(tmp_path: Path) -> None:
    assert cpu.cpu_int8_flags(tmp_path / "absent") == frozenset()


def test_session_entries_default_to_this_machine() -> None:
    """Without ``machine``, platform.machine(): an empty flag set asks for exact sums only on x86."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    assert cpu.session_entries(frozenset()) == (dict([cpu.EXACT_INT8_ENTRY]) if x86 else {})
    assert cpu.session_entries(frozenset({"avx512_vnni"})) == {}
