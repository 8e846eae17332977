"""Fixtures of the engine tests: a small toy dataset, and the throwaway methods registered."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "engine_support", Path(__file__).with_name("support.py")
)
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)
sys.modules["engine_support"] = support  # the test modules import it by this name


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small vehicle-layout toy dataset shared by the session (about a second to write)."""
    return support.make_small_toy(tmp_path_factory.mktemp("toy") / "vehicle")


@pytest.fixture
def methods(monkeypatch: pytest.MonkeyPatch):
    """The registry holds every registered method plus the throwaway ones, for this test only."""
    from dymlbench import registry

    fresh = support.registry_with_throwaway_methods()
    monkeypatch.setattr(registry, "METHODS", fresh)
    return fresh
