"""RESTORE_PRECISION: which file each model runs (float32 or its int8 variant), and where that shows."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from restore.core import cpu
from restore.core.manifest import ManifestError, ModelSpec, load_manifest
from restore.service.inference import precision, runtime
from restore.service.inference.engine import OrtEngine
from restore.service.settings import Settings
from tests.conftest import BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest
from tests.restore.core.test_cpu import ISAS, write_cpuinfo

#: What RESTORE_PRECISION=auto serves on each kind of CPU (tests.restore.core.test_cpu.ISAS): int8
#: only with an 8-bit dot product, whose exact sums the variants' quality gates were measured with.
AUTO = {
    "AVX2 (Haswell, AMD Zen 2/3)": "float32",
    "AVX-512 without VNNI (Skylake-SP)": "float32",
    "AVX-VNNI without AVX-512 (Alder Lake)": "int8",
    "AVX-512 VNNI (Cascade Lake, AMD Zen 4)": "int8",
    "AMX (Sapphire Rapids)": "int8",
    "Arm with SDOT (Neoverse N1)": "int8",
    "Arm without SDOT (Cortex-A72)": "float32",
}


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


@pytest.mark.parametrize("isa", AUTO)
def test_auto_serves_int8_only_on_a_cpu_with_an_8_bit_dot_product(tmp_path: Path, isa: str) -> None:
    """Each kind of CPU's flags, read as the service reads /proc/cpuinfo, then the choice; forced
    int8 runs anywhere (on x86 without VNNI with exact u8 x u8 sums: tests.restore.core.test_cpu)."""
    found = cpu.cpu_int8_flags(write_cpuinfo(tmp_path, isa))
    (spec,) = load_manifest(with_variant(tmp_path))
    assert precision.choose("auto", spec, provider=CPU, int8_flags=found) == AUTO[isa]
    assert precision.choose("int8", spec, provider=CPU, int8_flags=found) == "int8"
    assert precision.choose("auto", spec, provider=CUDA, int8_flags=found) == "float32"


@pytest.mark.anyio
@pytest.mark.parametrize("isa", ["AVX2 (Haswell, AMD Zen 2/3)", "AMX (Sapphire Rapids)"])
async def test_forced_int8_runs_with_the_entries_of_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isa: str) -> None:
    """RESTORE_PRECISION=int8 with the shipped variant and real ONNX Runtime: on an x86 CPU without
    VNNI the session carries EXACT_INT8_ENTRY (ORT's u8 x s8 sums there blank HED's edge maps)."""
    exact_entry = ISAS[isa][3]
    flags = cpu.cpu_int8_flags(write_cpuinfo(tmp_path, isa))
    monkeypatch.setattr(cpu, "cpu_int8_flags", lambda: flags)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")  # whatever this host is
    sessions: list[str | None] = []

    class Recording(OrtEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            try:
                sessions.append(self._session.get_session_options().get_session_config_entry(cpu.EXACT_INT8_ENTRY[0]))
            except RuntimeError:  # "SessionOptions does not have configuration with key: ..."
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
    expected = AUTO[isa]
    flags = cpu.cpu_int8_flags(write_cpuinfo(tmp_path, isa))
    monkeypatch.setattr(cpu, "cpu_int8_flags", lambda: flags)
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
