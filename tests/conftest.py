"""Shared pytest configuration: the ``gpu`` marker skips without CUDA; the engine test helpers
(``tests/engine/support.py``, importable as ``engine_support``) and their fixtures: a small toy
dataset and the throwaway methods registered."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"

_spec = importlib.util.spec_from_file_location(
    "engine_support", Path(__file__).parent / "engine" / "support.py"
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
