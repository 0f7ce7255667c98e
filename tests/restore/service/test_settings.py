from __future__ import annotations

import pytest
from pydantic import ValidationError

from restore.service.settings import Settings


def test_environment_is_read_with_prefix_and_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORE_API_KEYS", "alpha, beta")
    monkeypatch.setenv("RESTORE_MODELS", "dncnn-gray-s25")
    monkeypatch.setenv("RESTORE_TILE_SIZE", "256")
    settings = Settings()
    assert settings.api_keys == ("alpha", "beta")
    assert settings.models == ("dncnn-gray-s25",)
    assert settings.tile_size == 256


def test_invalid_values_fail_at_start_and_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORE_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("RESTORE_DEVICE")
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.tile_size = 5  # type: ignore[misc]


def test_batch_limit_follows_the_provider() -> None:
    assert Settings().batch_limit("CUDAExecutionProvider") == 8
    assert Settings().batch_limit("CPUExecutionProvider") == 1
    assert Settings(max_batch=3).batch_limit("CPUExecutionProvider") == 3
