"""export/weather.py: the network of a training config, and its manifest summary."""

from __future__ import annotations

import pytest

from export.weather import build_network, network_config, network_summary
from models.msbdn import MSBDN, MSBDNConfig
from models.weathernet import WeatherNet, WeatherNetConfig


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
