"""Fixtures of the training tests: ``one_thread`` is the model tests' own (tiny tensors, one thread)."""

from __future__ import annotations

from tests.models.conftest import one_thread

__all__ = ["one_thread"]
