"""RESTORE_PRECISION: which file each model runs (float32 or its int8 variant), and where that shows."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from service import precision, runtime
from service.engine import OrtEngine
from service.manifest import ManifestError, ModelSpec, load_manifest
from service.settings import Settings
from tests.conftest import BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest

X86_FLAGS = "fpu vme avx2 avx512f avx512_vnni amx_int8 amx_tile"
X86_OLD = "fpu vme sse4_2 avx avx2 fma"
ARM = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp"

_X86 = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat clflush mmx fxsr sse sse2 ht syscall nx lm"
_AVX2 = f"{_X86} pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand bmi1 avx2 bmi2"
_AVX512 = f"{_AVX2} avx512f avx512dq avx512cd avx512bw avx512vl"
#: /proc/cpuinfo flags (x86) or Features (Arm) of each kind of CPU ORT's int8 kernels tell apart
#: (export.int8_arithmetic), the 8-bit dot-product flags found, what RESTORE_PRECISION=auto serves,
#: and whether the service's ORT sessions carry EXACT_INT8_ENTRY.
ISAS = {
    # vpmaddubsw: u8 x s8 products added in saturating int16 pairs, and little faster than float:
    # float32, and exact u8 x u8 sums asked of ORT where int8 is forced
    "AVX2 (Haswell, AMD Zen 2/3)": ("flags", _AVX2, set(), "float32", True),
    "AVX-512 without VNNI (Skylake-SP)": ("flags", _AVX512, set(), "float32", True),
    # vpdpbusds / AMX tiles: exact int32 sums, the arithmetic the variants' quality gates were measured with
    "AVX-VNNI without AVX-512 (Alder Lake)": ("flags", f"{_AVX2} avx_vnni", {"avx_vnni"}, "int8", False),
    "AVX-512 VNNI (Cascade Lake, AMD Zen 4)": ("flags", f"{_AVX512} avx512_vnni", {"avx512_vnni"}, "int8", False),
    "AMX (Sapphire Rapids)": (
        "flags", f"{_AVX512} avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8", {"avx512_vnni", "avx_vnni", "amx_int8"}, "int8",
        False,
    ),
    "Arm with SDOT (Neoverse N1)": ("Features", ARM, {"asimddp"}, "int8", False),
    "Arm without SDOT (Cortex-A72)": ("Features", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", set(), "float32", False),
}


def _cpuinfo(tmp_path: Path, key: str, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n")
    return path


@pytest.mark.parametrize(
    "key,flags,expected",
    [("flags", X86_FLAGS, {"avx512_vnni", "amx_int8"}), ("flags", X86_OLD, set()), ("Features", ARM, {"asimddp"})],
)
def test_cpu_int8_flags_reads_x86_and_arm_cpuinfo(tmp_path: Path, key: str, flags: str, expected: set[str]) -> None:
    assert precision.cpu_int8_flags(_cpuinfo(tmp_path, key, flags)) == expected


def test_cpu_int8_flags_is_empty_when_cpuinfo_cannot_be_read(tmp_path: Path) -> None:
    assert precision.cpu_int8_flags(tmp_path / "absent") == frozenset()


def with_variant(tmp_path: Path, name: str = "gray") -> Path:
    """A fake manifest whose model lists an int8 variant file (content irrelevant to fakes)."""
    root = write_fake_manifest(tmp_path, [{"name": name}])
    variant = root / f"{name}.int8.onnx"
    variant.write_bytes(b"fake int8 model")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["models"][0]["variants"] = {
        "int8": {"file": variant.name, "sha256": hashlib.sha256(variant.read_bytes()).hexdigest(),
                 "provenance": {"source": "quantized"}, "metrics": {"speed": {"speedup": 2.0}}}
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


VNNI = frozenset({"avx512_vnni"})
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@pytest.mark.parametrize(
    "setting,provider,flags,expected",
    [
        ("auto", CPU, VNNI, "int8"),
        ("auto", CPU, frozenset(), "float32"),  # no 8-bit dot product: int8 gains little or loses
        ("auto", CUDA, VNNI, "float32"),  # the GPU's float (or fp16) kernels are the fast path
        ("int8", CUDA, frozenset(), "int8"),  # forced, for measuring
        ("float32", CPU, VNNI, "float32"),
    ],
)
def test_choose(tmp_path: Path, setting: precision.PrecisionSetting, provider: str, flags: frozenset[str], expected: str) -> None:
    (spec,) = load_manifest(with_variant(tmp_path))
    assert precision.choose(setting, spec, provider=provider, int8_flags=flags) == expected
    chosen = precision.at_precision(spec, precision.choose(setting, spec, provider=provider, int8_flags=flags))
    assert chosen.file.name == ("gray.int8.onnx" if expected == "int8" else "gray.onnx")


@pytest.mark.parametrize("isa", ISAS)
def test_auto_serves_int8_only_on_a_cpu_with_an_8_bit_dot_product(tmp_path: Path, isa: str) -> None:
    """Each kind of CPU's flags, read as the service reads /proc/cpuinfo, then the choice; forced
    int8 runs anywhere (on AVX2 with the int16-pair sums, see docs/benchmarks.md)."""
    key, flags, dot_flags, expected, exact_entry = ISAS[isa]
    found = precision.cpu_int8_flags(_cpuinfo(tmp_path, key, flags))
    assert found == dot_flags
    machine = "x86_64" if key == "flags" else "aarch64"
    assert precision.session_entries(found, machine) == (dict([precision.EXACT_INT8_ENTRY]) if exact_entry else {})
    (spec,) = load_manifest(with_variant(tmp_path))
    assert precision.choose("auto", spec, provider=CPU, int8_flags=found) == expected
    assert precision.choose("int8", spec, provider=CPU, int8_flags=found) == "int8"
    assert precision.choose("auto", spec, provider=CUDA, int8_flags=found) == "float32"


@pytest.mark.anyio
@pytest.mark.parametrize("isa", ["AVX2 (Haswell, AMD Zen 2/3)", "AMX (Sapphire Rapids)"])
async def test_forced_int8_runs_with_the_entries_of_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isa: str) -> None:
    """RESTORE_PRECISION=int8 with the shipped variant and real ONNX Runtime: on an x86 CPU without
    VNNI the session carries EXACT_INT8_ENTRY (ORT's u8 x s8 sums there blank HED's edge maps)."""
    key, line, _, _, exact_entry = ISAS[isa]
    flags = precision.cpu_int8_flags(_cpuinfo(tmp_path, key, line))
    monkeypatch.setattr(precision, "cpu_int8_flags", lambda: flags)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    sessions: list[str | None] = []

    class Recording(OrtEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            try:  # ORT raises for an entry it was not given
                sessions.append(self._session.get_session_options().get_session_config_entry(precision.EXACT_INT8_ENTRY[0]))
            except Exception:
                sessions.append(None)

    monkeypatch.setattr(runtime, "OrtEngine", Recording)
    settings = Settings(models=("dncnn-gray-s25",), precision="int8", intra_op_threads=1)
    async with serve(settings) as client:
        assert (await client.get("/v1/models")).json()["models"][0]["precision"] == "int8"
        answer = await client.post("/denoise?model=dncnn-gray-s25", content=encode_pil(noisy_image(16, 16, 1), "PNG"))
        assert answer.status_code == 200, answer.text
    assert sessions == ["1" if exact_entry else None]


@pytest.mark.parametrize("setting", ["auto", "int8"])
def test_a_model_without_a_variant_runs_float32_whatever_the_setting(tmp_path: Path, setting: precision.PrecisionSetting) -> None:
    (spec,) = load_manifest(write_fake_manifest(tmp_path, [{"name": "plain"}]))
    assert precision.choose(setting, spec, provider=CPU, int8_flags=VNNI) == "float32"


def test_an_unknown_variant_precision_is_a_manifest_error(tmp_path: Path) -> None:
    root = with_variant(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["models"][0]["variants"]["int4"] = manifest["models"][0]["variants"]["int8"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="int4"):
        load_manifest(root)


@pytest.mark.anyio
@pytest.mark.parametrize("isa", ["AVX2 (Haswell, AMD Zen 2/3)", "AVX-512 without VNNI (Skylake-SP)", "AMX (Sapphire Rapids)"])
async def test_auto_loads_the_variant_on_a_vnni_cpu_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isa: str
) -> None:
    key, line, _, expected, _ = ISAS[isa]
    flags = precision.cpu_int8_flags(_cpuinfo(tmp_path, key, line))
    monkeypatch.setattr(precision, "cpu_int8_flags", lambda: flags)
    loaded: list[Path] = []

    def factory(spec: ModelSpec) -> BoxEngine:
        loaded.append(spec.file)
        return BoxEngine()

    async with serve(Settings(models_dir=with_variant(tmp_path)), factory) as client:
        listing = (await client.get("/v1/models")).json()
        assert (await client.post("/denoise", content=encode_pil(noisy_image(8, 8, 1), "PNG"))).status_code == 200
        text = (await client.get("/metrics")).text
    assert [path.name for path in loaded] == ["gray.int8.onnx" if expected == "int8" else "gray.onnx"]
    (model,) = listing["models"]
    assert model["precision"] == expected and model["file"] == "gray.onnx"
    assert model["variants"]["int8"]["file"] == "gray.int8.onnx"  # both listed, with their own figures
    assert listing["precision"] == "auto" and listing["cpu_int8_flags"] == sorted(flags)
    assert f'restore_model_precision{{model="gray",precision="{expected}"}} 1.0' in text


@pytest.mark.anyio
async def test_a_variant_whose_checksum_fails_fails_the_model_instead_of_running_float(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator asked for int8: quietly serving float32 would hide a broken deploy."""
    root = with_variant(tmp_path)
    (root / "gray.int8.onnx").write_bytes(b"tampered")
    async with serve(Settings(models_dir=root, precision="int8", load_retry_s=60), lambda spec: BoxEngine(), wait_ready=False) as client:
        for _ in range(200):
            body = (await client.get("/readyz")).json()
            if "sha256 mismatch" in str(body):
                break
            await asyncio.sleep(0.02)
        assert "sha256 mismatch for gray.int8.onnx" in body["not_ready"]["gray"]
