"""export/weather.py: the network of a training config, and its manifest summary."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export.onnx_export import export_onnx, run_onnx
from export.weather import CONFIG_KEY, FUSED_KEY, NAME, VERSION, build_network, inference_network, main, model_2_provenance, network_config, network_summary, weather_from_onnx, write_config
from models.msbdn import MSBDN, MSBDNConfig
from models.weathernet import GatedBlock, WeatherNet, WeatherNetConfig
from restore.core.hashing import sha256_file
from restore.core.manifest import MANIFEST_NAME, read_manifest, write_manifest


def test_a_config_without_architecture_is_msbdn() -> None:
    assert network_config({"width": 0.375, "res_blocks": 4, "residual": True, "lr": 1e-3}) == \
        MSBDNConfig(width=0.375, res_blocks=4, residual=True)


def test_weathernet_config_reads_its_fields_and_old_checkpoints_get_128_channels() -> None:
    config = network_config({"architecture": "weathernet", "width": 0.5, "max_channels": 64,
                             "attention": "pool", "head": "residual"})
    assert config == WeatherNetConfig(width=8, max_channels=64, attention="pool", head="residual")
    assert network_config({"architecture": "weathernet"}).max_channels == 128  # the pilots' size


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="architecture"):
        network_config({"architecture": "unet"})


def test_summary_names_the_architecture_and_counts_parameters() -> None:
    net = build_network({"architecture": "weathernet", "width": 0.5, "max_channels": 32})
    assert isinstance(net, WeatherNet)
    summary = network_summary(net)
    assert summary["architecture"].startswith("WeatherNet")
    assert summary["max_channels"] == 32 and summary["head"] == "physical"
    assert summary["parameters"] == sum(p.numel() for p in net.parameters())
    msbdn = network_summary(MSBDN(MSBDNConfig(width=0.125, res_blocks=1)))
    assert msbdn["architecture"].startswith("MSBDN") and msbdn["res_blocks"] == 1


def test_a_weathernet_onnx_file_rebuilds_the_same_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The config travels in the file's metadata (the DCT statistics are constant operators, not
    weights), so benchmarks rebuild the PyTorch network from the ONNX file alone."""

    torch.manual_seed(0)
    config = WeatherNetConfig(width=8, max_channels=16, encoder_blocks=(0, 1, 1, 1), middle_blocks=1,
                              decoder_blocks=(0, 1, 0, 1), attention="pool", head="residual")
    network = WeatherNet(config).eval()
    for parameter in network.parameters():  # away from the identity, so a wrong rebuild shows
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    path = tmp_path / "w.onnx"
    export_onnx(network, path, (1, 3, 32, 32), check_shape=(1, 3, 48, 64))
    before = run_onnx(path, np.random.default_rng(0).random((1, 3, 32, 48), dtype=np.float32))
    write_config(path, network)
    proto = onnx.load(str(path))
    assert CONFIG_KEY in {p.key for p in proto.metadata_props}
    rebuilt = weather_from_onnx(proto)
    assert rebuilt.config == config
    x = np.random.default_rng(0).random((1, 3, 32, 48), dtype=np.float32)
    np.testing.assert_allclose(run_onnx(path, x), before, atol=0)
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(torch.from_numpy(x)).numpy(), before, atol=1e-4)


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_the_served_weathernet_is_fused_and_its_file_rebuilds_the_fused_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """export.weather exports fuse_for_inference's network (checked against the trained one) and
    marks the file, so weather_from_onnx rebuilds the same (fused) network from it; MSBDN is left alone."""

    torch.manual_seed(0)
    config = WeatherNetConfig(width=8, max_channels=16, encoder_blocks=(0, 1, 1, 1), middle_blocks=1,
                              decoder_blocks=(0, 1, 0, 1))
    network = WeatherNet(config).eval()
    for parameter in network.parameters():
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    served = inference_network(network)
    assert served is not network and not any(isinstance(m, GatedBlock) for m in served.modules())
    path = tmp_path / "w.onnx"
    export_onnx(served, path, (1, 3, 32, 32), check_shape=(1, 3, 48, 64))
    write_config(path, network, fused=True)
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props}[FUSED_KEY] == "1"
    rebuilt = weather_from_onnx(proto)
    x = np.random.default_rng(1).random((1, 3, 32, 48), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(torch.from_numpy(x)).numpy(), run_onnx(path, x), atol=1e-4)
        np.testing.assert_allclose(network(torch.from_numpy(x)).numpy(), run_onnx(path, x), atol=1e-3)  # float16-stored weights
    msbdn = MSBDN(MSBDNConfig(width=0.25, res_blocks=1))
    assert inference_network(msbdn) is msbdn


@pytest.mark.slow  # over 5 s on 2 busy cores: make test-all only
def test_from_onnx_exports_the_served_file_again_with_the_same_function(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``--from-onnx`` rebuilds the network from a served file and exports it in the current
    inference form: same outputs, the provenance carried over with the re-export recorded, a new
    version, and no metrics (new bytes are measured again, never assumed)."""

    torch.manual_seed(0)
    network = WeatherNet(WeatherNetConfig(width=16, max_channels=16, encoder_blocks=(0, 1, 0, 0), middle_blocks=1,
                                          decoder_blocks=(0, 1, 0, 0), window=3)).eval()
    for parameter in network.parameters():
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    source = tmp_path / "served"
    served = inference_network(network)
    export_onnx(served, source / f"{NAME}.onnx", (1, 3, 32, 32), check_shape=(1, 3, 48, 64))
    write_config(source / f"{NAME}.onnx", served, fused=True)
    old_sha = sha256_file(source / f"{NAME}.onnx")
    entry = {"name": NAME, "task": "weather", "file": f"{NAME}.onnx", "sha256": old_sha, "version": "0.9",
             "channels": 3, "sigma": None, "overlap": 64, "multiple": 16, "default": True,
             "provenance": {"source": "trained", "exported_by": "python -m export.weather --checkpoint x.pt",
                            "overlap_check": {"tile": 512, "psnr_by_margin": {"64": 50.0}}},
             "metrics": {"heldout": {"rain": {"psnr": 30.0}}}}
    write_manifest(source / MANIFEST_NAME, [entry])

    out = tmp_path / "again"
    assert main(["--from-onnx", str(source / f"{NAME}.onnx"), "--out", str(out)]) == 0
    (new,) = read_manifest(out / MANIFEST_NAME)
    assert new["sha256"] == sha256_file(out / new["file"]) != old_sha
    assert new["version"] == VERSION and new["metrics"] == {}
    assert new["provenance"]["exported_by"] == entry["provenance"]["exported_by"]
    reexport = new["provenance"]["reexported"]
    assert reexport["from_sha256"] == old_sha and reexport["from_version"] == "0.9"
    assert reexport["by"].startswith("python -m export.weather --from-onnx")
    assert reexport["max_abs_change_on_sample"] < 1e-5
    check = new["provenance"]["tiling_check"]
    assert f"{new['overlap']}+{new['feather']}" in check["by_margin_and_feather"] and new["min_tile"] == check["tile"]
    assert "overlap_check" not in new["provenance"]
    metadata = {p.key: p.value for p in onnx.load(str(out / new["file"])).metadata_props}
    assert metadata[FUSED_KEY] == "1"
    x = np.random.default_rng(2).random((1, 3, 48, 80), dtype=np.float32)
    np.testing.assert_allclose(run_onnx(out / new["file"], x), run_onnx(source / f"{NAME}.onnx", x), atol=1e-5)


def test_from_onnx_and_checkpoint_are_exclusive_and_checkpoint_needs_its_stages(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["--from-onnx", "a.onnx", "--checkpoint", "b.pt", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--checkpoint", "b.pt", "--out", str(tmp_path)])


def test_a_campaign_release_keeps_model_2_provenance_once() -> None:
    """Shipping model 3 again must not nest the previous release inside the new one: model 2's
    record comes from a model-2 entry as it is and from a campaign entry's ``warm_start``."""
    model_2 = {"source": "trained", "stages": {"stage1": {"iterations": 1100}}}
    assert model_2_provenance({"version": "2.0.2", "provenance": model_2}) == model_2
    release = {"version": "3.0.0", "provenance": {"source": "trained", "iterations": 36000,
                                                   "warm_start": {"from": "x.pt", "model_2": model_2}}}
    assert model_2_provenance(release) == model_2
    assert model_2_provenance(None) == {}
