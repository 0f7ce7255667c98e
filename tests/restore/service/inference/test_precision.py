"""RESTORE_PRECISION: which file each model runs (float32 or its int8 variant), and where that shows."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from restore.core.manifest import ManifestError, ModelSpec, load_manifest
from restore.service.inference import precision
from restore.service.settings import Settings
from tests.conftest import BoxEngine, encode_pil, noisy_image, serve, write_fake_manifest

X86_FLAGS = "fpu vme avx2 avx512f avx512_vnni amx_int8 amx_tile"
X86_OLD = "fpu vme sse4_2 avx avx2 fma"
ARM = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp"


@pytest.mark.parametrize(
    "key,flags,expected",
    [("flags", X86_FLAGS, {"avx512_vnni", "amx_int8"}), ("flags", X86_OLD, set()), ("Features", ARM, {"asimddp"})],
)
def test_cpu_int8_flags_reads_x86_and_arm_cpuinfo(tmp_path: Path, key: str, flags: str, expected: set[str]) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n")
    assert precision.cpu_int8_flags(cpuinfo) == expected


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
@pytest.mark.parametrize("flags,expected", [(VNNI, "int8"), (frozenset(), "float32")])
async def test_auto_loads_the_variant_on_a_vnni_cpu_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], expected: str
) -> None:
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
