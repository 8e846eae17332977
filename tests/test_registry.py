"""Tests of the method registry: registration, lookup errors and discovery."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch

from dymlbench import registry as registry_module
from dymlbench.config import MethodConfig
from dymlbench.method import Method, Recipe, StepOutput
from dymlbench.registry import MethodRegistry, get_method, list_methods, register_method


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(MethodConfig):
    scale: float = 1.0


def make_method_class(name: str = "Toy") -> type[Method]:
    """A fresh complete Method subclass (same qualified name on every call)."""

    class Toy(Method):
        """A throwaway method."""

        citation = "A. Author. A toy method. 2024."
        config_type = ToyConfig

        @classmethod
        def recipe(cls, dataset: str) -> Recipe:
            return Recipe(method=ToyConfig())

        def training_step(self, batch):
            return StepOutput(loss=batch.features.sum())

        def embed(self, features: torch.Tensor) -> torch.Tensor:
            return features

    Toy.__name__ = name
    return Toy


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> MethodRegistry:
    """A fresh, empty registry in place of the global one, restored after the test."""
    fresh = MethodRegistry(package=None, entry_point_group=None)
    monkeypatch.setattr(registry_module, "METHODS", fresh)
    return fresh


def test_register_then_get_and_list(registry: MethodRegistry) -> None:
    first = register_method("toy-b")(make_method_class())

    class Other(make_method_class()):
        """Another throwaway method."""

    register_method("toy_a")(Other)

    assert get_method("toy-b") is first
    assert get_method("toy_a") is Other
    assert list_methods() == ("toy-b", "toy_a")


def test_duplicate_key_raises_naming_the_holder(registry: MethodRegistry) -> None:
    register_method("toy")(make_method_class())

    class Second(make_method_class()):
        """A different class."""

    with pytest.raises(ValueError, match=r"'toy' must be unique.*already registered by .*Toy"):
        register_method("toy")(Second)


def test_same_definition_imported_twice_is_not_a_duplicate(registry: MethodRegistry) -> None:
    # Two calls give two class objects with one qualified name in one file, as a module
    # imported under two names would.
    register_method("toy")(make_method_class())
    again = register_method("toy")(make_method_class())

    assert get_method("toy") is again


def test_unknown_key_lists_close_matches_and_known_keys(registry: MethodRegistry) -> None:
    for key in ("msa", "happier", "csl"):
        register_method(key)(make_method_class())

    with pytest.raises(ValueError) as info:
        get_method("mas")

    message = str(info.value)
    assert "but got 'mas'" in message
    assert "did you mean 'msa'?" in message
    assert "Registered methods: csl, happier, msa." in message


def test_unknown_key_in_empty_registry(registry: MethodRegistry) -> None:
    with pytest.raises(ValueError, match="Registered methods: none"):
        get_method("msa")


@pytest.mark.parametrize(
    "key", ["MSA", "1msa", "", "ms a"], ids=["upper", "digit", "empty", "space"]
)
def test_malformed_key_raises(registry: MethodRegistry, key: str) -> None:
    with pytest.raises(ValueError, match="must be lower case"):
        register_method(key)


def test_incomplete_classes_are_rejected(registry: MethodRegistry) -> None:
    class NoEmbed(Method):
        citation = "x"
        config_type = ToyConfig

        @classmethod
        def recipe(cls, dataset: str) -> Recipe:
            return Recipe(method=ToyConfig())

        def training_step(self, batch):
            return StepOutput(loss=torch.zeros(()))

    class NoCitation(make_method_class()):
        citation = ""

    class BadConfig(make_method_class()):
        config_type = dict

    with pytest.raises(TypeError, match="must implement embed"):
        register_method("a")(NoEmbed)
    with pytest.raises(TypeError, match="must set `citation`"):
        register_method("b")(NoCitation)
    with pytest.raises(TypeError, match="frozen dataclass subclassing MethodConfig"):
        register_method("c")(BadConfig)
    with pytest.raises(TypeError, match="must be a subclass of Method"):
        register_method("d")(int)


PLUGIN_SOURCE = """
from __future__ import annotations

import dataclasses

import torch

from dymlbench.config import MethodConfig
from dymlbench.method import Method, Recipe, StepOutput
from dymlbench.registry import register_method


@dataclasses.dataclass(frozen=True, kw_only=True)
class PluginConfig(MethodConfig):
    margin: float = 0.1


class _Base(Method):
    citation = "P. Lugin. A method from elsewhere. 2025."
    config_type = PluginConfig

    @classmethod
    def recipe(cls, dataset):
        return Recipe(method=PluginConfig())

    def training_step(self, batch):
        return StepOutput(loss=batch.features.sum())

    def embed(self, features):
        return features


class PluginMethod(_Base):
    '''Registered by its entry point's name.'''


@register_method("self-registered")
class SelfRegistered(_Base):
    '''Registers itself on import.'''
"""


@pytest.fixture
def plugin_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Importable plugin modules in ``tmp_path``, removed from ``sys.modules`` afterwards."""
    (tmp_path / "dyml_plugin_demo.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    (tmp_path / "dyml_plugin_broken.py").write_text("raise ImportError('missing dependency')\n")
    (tmp_path / "dyml_plugin_value.py").write_text("NOT_A_METHOD = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("dyml_plugin_demo", "dyml_plugin_broken", "dyml_plugin_value"):
        sys.modules.pop(name, None)


def test_entry_points_are_discovered(
    monkeypatch: pytest.MonkeyPatch, plugin_modules: Path
) -> None:
    group = registry_module.METHOD_ENTRY_POINT_GROUP
    entry_points = [
        metadata.EntryPoint(name="plugin", value="dyml_plugin_demo:PluginMethod", group=group),
        metadata.EntryPoint(name="self-registered", value="dyml_plugin_demo", group=group),
        metadata.EntryPoint(name="broken", value="dyml_plugin_broken", group=group),
        metadata.EntryPoint(name="value", value="dyml_plugin_value:NOT_A_METHOD", group=group),
    ]
    calls = []

    def fake_entry_points(**params: str) -> list[metadata.EntryPoint]:
        calls.append(params)
        return [ep for ep in entry_points if ep.group == params.get("group")]

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    fresh = MethodRegistry(package=None)
    monkeypatch.setattr(registry_module, "METHODS", fresh)

    assert list_methods() == ("plugin", "self-registered")
    assert get_method("plugin").__name__ == "PluginMethod"
    assert get_method("self-registered").__name__ == "SelfRegistered"
    with pytest.raises(ValueError) as info:
        get_method("brokn")
    message = str(info.value)
    assert "did you mean 'broken'?" not in message  # a failed entry point is not registered
    assert "broken: ImportError: missing dependency" in message
    assert "value: must point to a module or a Method subclass" in message
    assert calls == [{"group": "dymlbench.methods"}]  # discovery runs once


def test_builtin_package_submodules_are_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "dyml_builtin_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = MethodRegistry(package="dyml_builtin_demo", entry_point_group=None)
    monkeypatch.setattr(registry_module, "METHODS", fresh)
    try:
        assert list_methods() == ("self-registered",)
    finally:
        for name in ("dyml_builtin_demo", "dyml_builtin_demo.toy"):
            sys.modules.pop(name, None)


def test_missing_or_empty_builtin_package_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dyml_empty_demo").mkdir()
    (tmp_path / "dyml_empty_demo" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        for package in ("dyml_no_such_package", "dyml_empty_demo"):
            assert MethodRegistry(package=package, entry_point_group=None).keys() == ()
    finally:
        sys.modules.pop("dyml_empty_demo", None)


def test_the_global_registry_discovers_without_error() -> None:
    assert all(isinstance(key, str) for key in list_methods())
