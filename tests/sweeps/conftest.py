"""Fixtures of the sweep tests: a small toy dataset and the throwaway methods registered."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module  # the test modules import it by this name
    return module


support = _load("sweep_engine_support", Path(__file__).parents[1] / "engine" / "support.py")
_load("sweep_helpers", Path(__file__).with_name("helpers.py"))


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small vehicle-layout toy dataset of the engine tests."""
    return support.make_small_toy(tmp_path_factory.mktemp("toy") / "vehicle")


@pytest.fixture
def methods(monkeypatch: pytest.MonkeyPatch):
    """The registry holds every registered method plus the throwaway ones, for this test only."""
    from dymlbench import registry

    fresh = support.registry_with_throwaway_methods()
    monkeypatch.setattr(registry, "METHODS", fresh)
    return fresh
