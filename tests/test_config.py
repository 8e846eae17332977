"""Tests of the run configuration: validation, YAML round trip, overrides, resolution."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import torch

from dymlbench import registry as registry_module
from dymlbench.config import (
    DATASETS,
    ConfigError,
    ConfigTypeError,
    DataConfig,
    MethodConfig,
    OptimConfig,
    RunConfig,
    UnknownKeyError,
    apply_overrides,
    bounded,
    parse_assignment,
    resolve_config,
)
from dymlbench.method import Method, Recipe, StepOutput
from dymlbench.models.ema import EMASpec
from dymlbench.registry import MethodRegistry, register_method


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(MethodConfig):
    margin: float = bounded(0.1, ge=0.0)
    margins: tuple[float, float, float] = (0.25, 0.35, 0.45)
    n_proxies: int = bounded(2, ge=1)
    variant: Literal["multi", "single"] = "multi"
    ema: EMASpec | None = None


class Toy(Method):
    """A throwaway method whose recipe sets run-level keys."""

    citation = "A. Author. A toy method. 2024."
    config_type = ToyConfig

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        run = {
            "optim.optimizer": "sgd",
            "optim.lr": 0.01,
            "optim.nesterov": True,
            "optim.epochs": 20,
            "model.embedding_dim": 6,
        }
        if dataset == "animal":
            run["optim.freeze_epochs"] = 4
        return Recipe(method=ToyConfig(margin=0.0 if dataset == "animal" else 0.1), run=run)

    def training_step(self, batch):
        return StepOutput(loss=batch.features.sum())

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return features


class BadRecipe(Toy):
    """A method whose recipe has a typo."""

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        return Recipe(method=ToyConfig(), run={"optim.lrr": 0.1})


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> MethodRegistry:
    """A fresh registry holding the throwaway methods, restored after each test."""
    fresh = MethodRegistry(package=None, entry_point_group=None)
    monkeypatch.setattr(registry_module, "METHODS", fresh)
    register_method("toy")(Toy)
    register_method("bad-recipe")(BadRecipe)
    return fresh


def test_resolve_applies_recipe_then_overrides() -> None:
    config = resolve_config(
        method="toy",
        dataset="animal",
        overrides=["optim.lr=0.05", "method.margin=0.2", "method.margins=[0.1, 0.2, 0.3]"],
    )

    assert config.method_name == "toy"
    assert config.data.dataset == "animal"
    assert config.optim.optimizer == "sgd"
    assert config.optim.nesterov is True
    assert config.optim.freeze_epochs == 4
    assert config.optim.lr == 0.05
    assert config.model.embedding_dim == 6
    assert config.model.backbone == "resnet34"
    assert config.method == ToyConfig(margin=0.2, margins=(0.1, 0.2, 0.3))
    assert config.optim.batch_size == 256


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = resolve_config(
        method="toy",
        dataset="vehicle",
        overrides=[
            "data.data_dir=/data/dyml_vehicle",
            "optim.grad_clip=5",
            "optim.min_lr=1e-6",
            "method.ema={momentum: 0.999, schedule: cosine}",
        ],
    )
    path = tmp_path / "config.yaml"
    config.write(path)

    assert RunConfig.from_yaml(config.to_yaml()) == config
    assert RunConfig.read(path) == config
    assert config.data.data_dir == Path("/data/dyml_vehicle")
    assert config.optim.grad_clip == 5.0
    assert config.method.ema == EMASpec(momentum=0.999, schedule="cosine")


def test_a_saved_config_file_starts_a_run(tmp_path: Path) -> None:
    saved = resolve_config(method="toy", dataset="product", overrides=["optim.epochs=3"])
    path = tmp_path / "config.yaml"
    saved.write(path)

    config = resolve_config(config_file=path, overrides=["method.n_proxies=5"])

    assert config == dataclasses.replace(saved, method=ToyConfig(n_proxies=5))


def test_a_partial_config_file_is_applied_over_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "partial.yaml"
    path.write_text("optim:\n  lr: 0.2\nmethod:\n  margin: 0.3\n")

    config = resolve_config(method="toy", dataset="vehicle", config_file=path)

    assert config.optim.lr == 0.2
    assert config.optim.optimizer == "sgd"  # from the recipe
    assert config.method.margin == 0.3


def test_config_file_disagreeing_with_the_dataset_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    resolve_config(method="toy", dataset="vehicle").write(path)

    with pytest.raises(ConfigError, match=r"`data.dataset` must agree with the config file"):
        resolve_config(method="toy", dataset="animal", config_file=path)


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: fast\n")

    with pytest.raises(
        ConfigError, match=r"bad.yaml: `optim.lr` must be a number, but got 'fast'"
    ):
        resolve_config(method="toy", dataset="toy", config_file=path)


def test_validation_runs_once_on_the_final_config(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text("optim:\n  epochs: 3\n")  # < freeze_epochs of the animal recipe

    config = resolve_config(
        method="toy", dataset="animal", config_file=path, overrides=["optim.freeze_epochs=0"]
    )

    assert (config.optim.epochs, config.optim.freeze_epochs) == (3, 0)
    with pytest.raises(ConfigError, match=r"`optim.freeze_epochs` must be < epochs \(3\)"):
        resolve_config(method="toy", dataset="animal", config_file=path)


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("optim.lrr=0.1", "unknown key `optim.lrr`; did you mean `optim.lr`?"),
        ("method.marginn=0.1", "unknown key `method.marginn`; did you mean `method.margin`"),
        ("optimm.lr=0.1", "unknown key `optimm`; did you mean `optim`?"),
        ("method.ema.momentun=0.9", "did you mean `method.ema.momentum`?"),
    ],
    ids=["optim", "method", "section", "nested-method"],
)
def test_unknown_key_names_close_matches(assignment: str, expected: str) -> None:
    with pytest.raises(UnknownKeyError) as info:
        resolve_config(method="toy", dataset="toy", overrides=[assignment])

    assert expected in str(info.value)


def test_unknown_key_lists_the_valid_keys_at_its_level() -> None:
    with pytest.raises(UnknownKeyError) as info:
        resolve_config(method="toy", dataset="toy", overrides=["optim.zzz=1"])

    message = str(info.value)
    assert "The keys under `optim` are: optimizer, lr, weight_decay, momentum" in message
    assert message.startswith("--set: ")
    with pytest.raises(UnknownKeyError, match=r"^--set: unknown key `optim.zzz`"):
        apply_overrides(resolve_config(method="toy", dataset="toy"), ["optim.zzz=1"])


def test_from_dict_rejects_unknown_nested_keys_with_dotted_paths() -> None:
    with pytest.raises(UnknownKeyError, match=r"`data.imagesize`; did you mean `data.image_size`"):
        RunConfig.from_dict(
            {"method_name": "toy", "data": {"dataset": "toy", "imagesize": 3}, "method": {}}
        )
    with pytest.raises(ConfigError, match=r"`data.dataset` must be given"):
        RunConfig.from_dict({"method_name": "toy", "data": {}, "method": {}})


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("optim.lr=abc", "`optim.lr` must be a number, but got 'abc'"),
        ("optim.epochs=2.5", "`optim.epochs` must be an integer, but got 2.5"),
        ("optim.nesterov=maybe", "`optim.nesterov` must be a boolean (true or false)"),
        ("optim.optimizer=adamm", "must be one of 'adam', 'adamw', 'sgd', but got 'adamm'; did"),
        ("method.margins=[1, 2]", "`method.margins` must be a list of 3 items"),
        ("method.margins=[1, x, 2]", "`method.margins.1` must be a number, but got 'x'"),
        ("optim.freeze_groups=3", "`optim.freeze_groups` must be a list of strings"),
        ("method.variant=both", "`method.variant` must be one of 'multi', 'single'"),
        ("optim.lr.x=1", "`optim.lr` is a value, not a section"),
    ],
    ids=[
        "float",
        "int",
        "bool",
        "literal",
        "tuple-length",
        "tuple-item",
        "tuple",
        "method",
        "path",
    ],
)
def test_wrong_types_are_errors_naming_the_key(assignment: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(method="toy", dataset="toy", overrides=[assignment])

    assert expected in str(info.value)


def test_a_wrong_type_is_also_a_type_error() -> None:
    with pytest.raises(TypeError):
        resolve_config(method="toy", dataset="toy", overrides=["optim.lr=abc"])
    assert issubclass(ConfigTypeError, TypeError)


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("optim.lr=0", "`optim.lr` must be > 0, but got 0.0"),
        ("optim.momentum=1", "`optim.momentum` must be in [0, 1), but got 1.0"),
        ("optim.epochs=0", "`optim.epochs` must be >= 1, but got 0"),
        ("optim.grad_clip=-1", "`optim.grad_clip` must be > 0, but got -1.0"),
        ("data.val_fraction=1.0", "`data.val_fraction` must be in [0, 1), but got 1.0"),
        ("method.margin=-0.1", "`method.margin` must be >= 0, but got -0.1"),
        ("method.ema.momentum=2", "`method.ema.momentum` must be in [0, 1], but got 2.0"),
        ("optim.min_lr=1", "`optim.min_lr` must be <= lr (0.01), but got 1.0"),
        ("optim.freeze_epochs=20", "`optim.freeze_epochs` must be < epochs (20), but got 20"),
        ("optim.optimizer=adam", "`optim.nesterov` must be false unless optimizer is 'sgd'"),
    ],
    ids=[
        "lr",
        "momentum",
        "epochs",
        "grad-clip",
        "val-fraction",
        "method",
        "nested-method",
        "min-lr",
        "freeze",
        "nesterov",
    ],
)
def test_out_of_range_values_are_errors_naming_the_key(assignment: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(method="toy", dataset="toy", overrides=[assignment])

    assert expected in str(info.value)


def test_override_values_are_converted_to_the_field_types() -> None:
    config = resolve_config(
        method="toy",
        dataset="toy",
        overrides=[
            "optim.lr=1e-3",  # PyYAML reads this as a string
            "optim.grad_clip=null",
            "model.pretrained=123",
            "model.channels_last=true",
            "optim.freeze_groups=[backbone, heads]",
            "method.n_proxies=7",
            "model.pretrained=/ckpt/run=3/checkpoint.pth",
        ],
    )

    assert config.optim.lr == 0.001
    assert config.optim.grad_clip is None
    assert config.model.channels_last is True
    assert config.optim.freeze_groups == ("backbone", "heads")
    assert config.method.n_proxies == 7
    assert config.model.pretrained == "/ckpt/run=3/checkpoint.pth"
    numeric_name = resolve_config(method="toy", dataset="toy", overrides=["model.pretrained=123"])
    assert numeric_name.model.pretrained == "123"


def test_mapping_overrides_change_only_the_keys_they_name() -> None:
    config = resolve_config(method="toy", dataset="toy")

    changed = apply_overrides(config, {"optim": {"lr": 0.2}, "method.margin": 0.4})

    assert changed.optim == dataclasses.replace(config.optim, lr=0.2)
    assert changed.method.margin == 0.4


@pytest.mark.parametrize(
    "assignment", ["method_name=other", "data.dataset=vehicle"], ids=["method", "dataset"]
)
def test_method_and_dataset_are_not_overridable(assignment: str) -> None:
    with pytest.raises(ConfigError, match="cannot be overridden"):
        resolve_config(method="toy", dataset="toy", overrides=[assignment])


def test_malformed_assignment_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"`--set` must be given as key=value"):
        parse_assignment("optim.lr")
    assert parse_assignment("engine.device=cuda") == ("engine.device", "cuda")


def test_unknown_method_and_dataset_are_errors() -> None:
    with pytest.raises(ValueError, match="did you mean 'toy'"):
        resolve_config(method="tyo", dataset="toy")
    with pytest.raises(
        ConfigError, match=r"`data.dataset` must be one of .*did you mean 'vehicle'"
    ):
        resolve_config(method="toy", dataset="vehicel")
    with pytest.raises(ConfigError, match=r"`data.dataset` must be given"):
        resolve_config(method="toy")


def test_a_recipe_error_names_the_recipe() -> None:
    with pytest.raises(UnknownKeyError, match=r"recipe of 'bad-recipe' for 'toy': unknown key"):
        resolve_config(method="bad-recipe", dataset="toy")


def test_sections_validate_on_construction() -> None:
    with pytest.raises(ConfigError) as info:
        OptimConfig(momentum=1.5)
    assert info.value.key == "momentum"
    assert str(info.value) == "`momentum` must be in [0, 1), but got 1.5"

    assert OptimConfig(lr=1).lr == 1.0 and isinstance(OptimConfig(lr=1).lr, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        OptimConfig().lr = 0.1  # type: ignore[misc]


def test_the_method_section_must_match_the_method() -> None:
    config = resolve_config(method="toy", dataset="toy")

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class OtherConfig(MethodConfig):
        pass

    with pytest.raises(ConfigTypeError, match=r"`method` must be a ToyConfig"):
        dataclasses.replace(config, method=OtherConfig())


def test_the_data_section_is_what_the_data_layer_reads() -> None:
    from dymlbench.data.dataset import DATASETS as DATA_LAYER_DATASETS
    from dymlbench.data.dataset import DataSpec

    config = resolve_config(
        method="toy", dataset="toy", overrides=["data.channel_order=rgb", "data.toy_seed=3"]
    )

    spec = DataSpec.from_dict(config.data.to_dict())
    assert (spec.dataset, spec.channel_order, spec.toy_seed) == ("toy", "rgb", 3)
    assert set(DATASETS) == set(DATA_LAYER_DATASETS)
    assert DataConfig.keys() == tuple(f.name for f in dataclasses.fields(DataSpec))
