"""The documented contract (src/restore/service/api/openapi.py) matches what the app does: read directly, and checked
by a bounded schemathesis run with every check against the app behind its real HTTP edge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from restore.service.app import create_app
from restore.core.manifest import load_manifest
from restore.service.api.openapi import heldout_gains
from restore.service.settings import Settings
from tests.conftest import MODELS_DIR, REPO, fake_engine, running_server, write_fake_suite

MODEL_PATHS = ("/denoise", "/edges", "/derain", "/dehaze", "/desnow")
KEY = "schemathesis-key"  # the key tests/restore/service/api/schemathesis.toml sends


def schema_of(settings: Settings) -> dict[str, Any]:
    schema: dict[str, Any] = create_app(settings, engine_factory=fake_engine).openapi()
    return schema


def test_the_weather_routes_say_they_are_experimental_with_the_manifests_gains() -> None:
    schema = schema_of(Settings(models=("weather-unified",)))
    metrics = next(spec for spec in load_manifest(MODELS_DIR) if spec.name == "weather-unified").metrics
    haze = metrics["heldout"]["haze"]["psnr"] - metrics["by_method"]["input"]["haze"]["psnr"]
    for path in ("/derain", "/dehaze", "/desnow"):
        operation = schema["paths"][path]["post"]
        assert "experimental" in operation["summary"] and operation["description"].startswith("**Experimental**")
        assert f"haze +{haze:.2f} dB" in operation["description"] and "clean photos" in operation["description"]


def test_heldout_gains_reads_what_was_measured() -> None:
    metrics = {
        "heldout": {"rain": {"psnr": 22.0}, "snow": {"psnr": 18.0}, "clean": {"psnr": 30.04}},
        "by_method": {"input": {"rain": {"psnr": 21.5}, "snow": {"psnr": 18.25}, "haze": {"psnr": 13.0}}},
    }
    assert heldout_gains(metrics) == "rain +0.50 dB, snow -0.25 dB; clean photos 30.0 dB"  # haze: no output measured
    assert heldout_gains({}) == ""
    routed = {"heldout": {"rain": {"psnr": 22.0}, "clean:rain": {"psnr": 34.55}, "clean:auto": {"psnr": 32.79}},
              "by_method": {"input": {"rain": {"psnr": 21.5}}}}
    assert heldout_gains(routed) == "rain +0.50 dB; clean photos 34.5 dB through rain, 32.8 dB through auto"


def test_every_status_a_model_route_returns_is_documented(tmp_path: Path) -> None:
    schema = schema_of(Settings(models_dir=write_fake_suite(tmp_path), api_keys=(KEY,)))
    for path in MODEL_PATHS:
        operation = schema["paths"][path]["post"]
        assert set(operation["responses"]) == {"200", "401", "406", "408", "413", "415", "422", "500", "503"}, path
        assert operation["responses"]["422"]["content"]["application/problem+json"]["schema"]["required"] == [
            "type", "title", "status", "detail",
        ]
        assert "Retry-After" in operation["responses"]["503"]["headers"]
        assert operation["security"] == [{"bearer": []}]
    scheme = schema["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def test_without_api_keys_no_route_claims_auth(tmp_path: Path) -> None:
    schema = schema_of(Settings(models_dir=write_fake_suite(tmp_path)))
    for path in MODEL_PATHS:
        operation = schema["paths"][path]["post"]
        assert "security" not in operation and "401" not in operation["responses"]
    assert "bearer" in schema["components"]["securitySchemes"]  # documented, not required


def test_enums_readyz_and_metrics_are_documented(tmp_path: Path) -> None:
    schema = schema_of(Settings(models_dir=write_fake_suite(tmp_path)))
    components = schema["components"]["schemas"]

    def query(path: str, name: str) -> dict[str, Any]:
        param = next(p for p in schema["paths"][path]["post"]["parameters"] if p["name"] == name)
        found: dict[str, Any] = param["schema"]
        for option in found.get("anyOf", [found]):
            if "$ref" in option:
                return components[option["$ref"].rsplit("/", 1)[1]]  # type: ignore[no-any-return]
            if "enum" in option:
                return option  # type: ignore[no-any-return]
        raise AssertionError(f"{path} {name}: no enum in {found}")

    for path in MODEL_PATHS:
        assert {"png", "jpeg", "webp", "tiff"} <= set(query(path, "format")["enum"])
    assert query("/edges", "depth")["enum"] == [8, 16]
    assert query("/edges", "side")["enum"] == ["fuse", "1", "2", "3", "4", "5"]
    readyz = schema["paths"]["/readyz"]["get"]["responses"]
    not_ready = readyz["503"]["content"]["application/json"]["schema"]
    assert not_ready["required"] == ["status"] and not_ready["properties"]["status"]["enum"] == ["not ready", "saturated"]
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_schemathesis_finds_nothing_against_the_running_app(tmp_path: Path) -> None:
    """All checks, seed and example count from tests/restore/service/api/schemathesis.toml; about 20 s on 2 busy cores."""
    settings = Settings(models_dir=write_fake_suite(tmp_path / "models"), tile_size=64, tile_overlap=2, api_keys=(KEY,))
    config = Path(__file__).with_name("schemathesis.toml")
    with running_server(settings) as running:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run", f"{running.base}/openapi.json"],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,  # cwd: its caches stay out of the checkout
        )
    if run.returncode != 0:
        pytest.fail(f"schemathesis found problems:\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}")
