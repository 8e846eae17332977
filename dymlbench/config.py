"""Typed run configuration: frozen dataclasses, YAML round trip and ``key=value`` overrides.

A run is described by one :class:`RunConfig`: the registry key of the method, the sections
``data``, ``model``, ``optim`` and ``engine``, and ``method``, the method's own frozen config
dataclass (a subclass of :class:`MethodConfig`). YAML is only the serialisation of these classes:
:meth:`ConfigBase.from_dict` rejects unknown keys and names the valid ones, every field is checked
against its type annotation (``Literal``, ``bool``, ``int``, ``float``, ``str``, ``Path``,
tuples, ``X | None`` and nested sections) and against the bounds declared with :func:`bounded`.

Keys are dotted paths from the top of a :class:`RunConfig`: ``optim.lr``, ``method.margin``.
Every error a user can cause is a :class:`ConfigError` that names the key.

:func:`resolve_config` is the one place where a run's configuration is made: the method's recipe
for the dataset, then a YAML file (``--config``), then ``--set key=value`` overrides, validated
once at the end.

Example:
    >>> optim = OptimConfig(lr=0.01, optimizer="sgd", momentum=0.9, nesterov=True)
    >>> optim.batch_size
    256
    >>> OptimConfig(lr=-1.0)
    Traceback (most recent call last):
    ...
    dymlbench.config.ConfigError: `lr` must be > 0, but got -1.0
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml

if TYPE_CHECKING:
    from typing_extensions import Self

DATASETS: tuple[str, ...] = ("vehicle", "animal", "product", "toy")
"""Dataset names a recipe is given for: the three DyML datasets and the generated toy set."""

Dataset = Literal["vehicle", "animal", "product", "toy"]

PRETRAINED_CHOICES: tuple[str, ...] = ("scratch", "imagenet")
"""Values of ``model.pretrained`` other than the path of a local checkpoint."""

_NOT_OVERRIDABLE = {
    "method_name": "the method is chosen by name when the run is resolved",
    "data.dataset": "the recipe depends on it; choose the dataset when the run is resolved",
}


class ConfigError(ValueError):
    """A configuration key or value a user can get wrong.

    Attributes:
        key: dotted path of the offending key, relative to the object being built ("" for the
            object itself); :meth:`under` prefixes it as the error travels up the sections.
        problem: what is wrong, phrased to follow the key: "must be > 0, but got -1".
        source: where the value came from (a file, a recipe, ``--set``), or ``None``.
    """

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem
        self.source = source

    def __str__(self) -> str:
        message = f"`{self.key}` {self.problem}" if self.key else self.problem
        return f"{self.source}: {message}" if self.source else message

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` (a section name) in front of its key."""
        error = copy.copy(self)
        error.key = f"{prefix}.{self.key}" if self.key else prefix
        return error

    def from_source(self, source: str) -> ConfigError:
        """The same error saying where the value came from, unless it already says."""
        error = copy.copy(self)
        error.source = self.source or source
        return error


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type (also a :class:`TypeError`)."""


class UnknownKeyError(ConfigError):
    """A key that the configuration does not have; the message lists the valid keys."""

    def __init__(self, key: str, valid: Iterable[str], *, source: str | None = None) -> None:
        self.valid = tuple(valid)
        super().__init__(key, "", source=source)

    def __str__(self) -> str:
        parent, _, name = self.key.rpartition(".")
        prefix = f"{parent}." if parent else ""
        close = difflib.get_close_matches(name, self.valid, n=3)
        message = f"unknown key `{self.key}`"
        if close:
            message += "; did you mean " + " or ".join(f"`{prefix}{c}`" for c in close) + "?"
        where = f"under `{parent}`" if parent else "at the top level"
        message += f" The keys {where} are: {', '.join(self.valid)}"
        return f"{self.source}: {message}" if self.source else message


@dataclasses.dataclass(frozen=True)
class _Bounds:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def check(self, value: float) -> None:
        low_ok = (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
        high_ok = (self.lt is None or value < self.lt) and (self.le is None or value <= self.le)
        if not (low_ok and high_ok):
            raise ConfigError("", f"must be {self.describe()}, but got {value!r}")

    def describe(self) -> str:
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            left = "(" if self.gt is not None else "["
            right = ")" if self.lt is not None else "]"
            return f"in {left}{low:g}, {high:g}{right}"
        if low is not None:
            return f"{'>' if self.gt is not None else '>='} {low:g}"
        return f"{'<' if self.lt is not None else '<='} {high:g}"


def bounded(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A dataclass field with a default and a numeric range, checked on construction.

    Args:
        default: the field's default value (``None`` is allowed for an optional field and is
            not range-checked).
        gt: the value must be greater than this.
        ge: the value must be greater than or equal to this.
        lt: the value must be less than this.
        le: the value must be less than or equal to this.

    Returns:
        A :func:`dataclasses.field` carrying the bounds in its metadata.

    Example:
        >>> @dataclasses.dataclass(frozen=True, kw_only=True)
        ... class Margin(ConfigBase):
        ...     margin: float = bounded(0.1, ge=0.0, lt=1.0)
        >>> Margin(margin=1.5)
        Traceback (most recent call last):
        ...
        dymlbench.config.ConfigError: `margin` must be in [0, 1), but got 1.5
    """
    if gt is not None and ge is not None or lt is not None and le is not None:
        raise ValueError("`bounded` takes at most one lower bound (gt or ge) and one upper bound")
    return dataclasses.field(default=default, metadata={"bounds": _Bounds(gt, ge, lt, le)})


class ConfigBase:
    """Base of every configuration section: checks, converts and serialises its fields.

    Subclasses are ``@dataclasses.dataclass(frozen=True, kw_only=True)``. On construction every
    field is checked against its annotation and converted where that is lossless (an ``int``
    where a ``float`` is expected, a list where a tuple is, a string where a ``Path`` is, a
    mapping where a section is), then :func:`bounded` ranges are checked, then :meth:`validate`
    runs. Subclasses put relations between fields in :meth:`validate`, not in ``__post_init__``.
    """

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for field in dataclasses.fields(self):
            try:
                value = _coerce(getattr(self, field.name), hints[field.name])
                bounds = field.metadata.get("bounds")
                if bounds is not None and value is not None:
                    bounds.check(value)
            except ConfigError as error:
                raise error.under(field.name) from None
            object.__setattr__(self, field.name, value)
        self.validate()

    def validate(self) -> None:
        """Check relations between fields; raise :class:`ConfigError` naming the key.

        Runs after every field has been type- and range-checked. The default checks nothing.
        """

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The names of this section's keys, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build the section from a mapping, e.g. the output of ``yaml.safe_load``.

        Args:
            data: one entry per key; missing keys take their defaults; nested sections are
                mappings too.

        Returns:
            The validated section.

        Raises:
            UnknownKeyError: a key the section does not have (the message lists the valid ones).
            ConfigError: a missing required key, a value of the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigTypeError("", f"must be a mapping of keys to values, but got {data!r}")
        valid = cls.keys()
        for key in data:
            if key not in valid:
                raise UnknownKeyError(str(key), valid)
        for field in dataclasses.fields(cls):
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required and field.name not in data:
                raise ConfigError(field.name, "must be given, but it is missing")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The section as plain YAML-safe values: dicts, lists, strings, numbers, booleans."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig(ConfigBase):
    """Base of a method's own config section (``method`` in a :class:`RunConfig`).

    A method declares ``@dataclasses.dataclass(frozen=True, kw_only=True) class
    MyConfig(MethodConfig)`` with its hyperparameters as typed fields (use :func:`bounded` for
    ranges); its recipe returns one per dataset. Its keys are overridden as ``method.<key>``.
    A method without hyperparameters uses ``MethodConfig`` itself.
    """


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(ConfigBase):
    """Where the images come from and how they are read.

    This is the one definition of a dataset's options: the data layer takes it as is
    (:data:`dymlbench.data.dataset.DataSpec` is this class under the data layer's name).

    Attributes:
        dataset: one of :data:`DATASETS`.
        data_dir: root folder of the dataset (``<root>/train/label.csv``, ...); ``None`` lets the
            data layer find it (``$DYMLBENCH_DATA``; the generated toy set in the cache).
        channel_order: channel order the decoded images are fed in. The released JPEGs are
            said to have swapped channels; the MSA code decodes with OpenCV (``"bgr"``, the
            default), the HAPPIER code with PIL (``"rgb"``). Recorded so runs can be compared.
        image_size: side of the square crops fed to the backbone; ``None`` for the dataset's
            default (224; 64 for the toy set).
        resize_size: shorter side the test images are resized to before the centre crop;
            ``None`` for ``image_size * 256 / 224``.
        val_fraction: fraction of the training fine classes held out, whole classes, as the
            validation split used for tuning; 0 trains on every class.
        val_seed: seed of the random choice of validation classes.
        val_protocol: how the validation split is evaluated (``"leave_one_out"``).
        toy_layout: test layout of the generated toy set: as ``"vehicle"`` (query/gallery
            benchmarks) or as ``"product"`` (one set).
        toy_seed: seed of the generated toy set.
    """

    dataset: Dataset
    data_dir: Path | None = None
    channel_order: Literal["bgr", "rgb"] = "bgr"
    image_size: int | None = bounded(None, ge=1)
    resize_size: int | None = bounded(None, ge=1)
    val_fraction: float = bounded(0.0, ge=0.0, lt=1.0)
    val_seed: int = bounded(0, ge=0)
    val_protocol: Literal["leave_one_out"] = "leave_one_out"
    toy_layout: Literal["vehicle", "product"] = "vehicle"
    toy_seed: int = bounded(0, ge=0)

    @property
    def crop_size(self) -> int:
        """The side of the square crops fed to the network."""
        if self.image_size is not None:
            return self.image_size
        return 64 if self.dataset == "toy" else 224

    @property
    def test_resize(self) -> int:
        """The shorter side the test transform resizes to before the centre crop."""
        if self.resize_size is not None:
            return self.resize_size
        return round(self.crop_size * 256 / 224)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(ConfigBase):
    """The backbone and the size of the embedding the method's heads produce.

    Attributes:
        backbone: a timm model name; built with ``num_classes=0`` and global average pooling.
        embedding_dim: size of the embedding the method's heads output (MSA: 513 = 3 x 171).
        pretrained: ``"scratch"`` (random init), ``"imagenet"`` (timm's pretrained weights,
            downloaded) or the path of a local checkpoint: a state dict, a timm checkpoint or a
            DINO checkpoint (see :func:`dymlbench.models.load_weights`).
        channels_last: run the backbone in the channels-last memory format (faster convolutions
            on recent GPUs).
    """

    backbone: str = "resnet34"
    embedding_dim: int = bounded(512, ge=1)
    pretrained: str = "imagenet"
    channels_last: bool = False

    def validate(self) -> None:
        """Check that the backbone and the initialisation are named."""
        if not self.backbone.strip():
            raise ConfigError("backbone", "must be a timm model name, but got an empty string")
        if not self.pretrained.strip():
            raise ConfigError(
                "pretrained",
                "must be 'scratch', 'imagenet' or the path of a checkpoint, but got ''",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig(ConfigBase):
    """Optimiser, schedule, batch composition and precision.

    The learning rate of each parameter group is ``lr`` times the group's multiplier; the
    method declares its groups and multipliers (:meth:`dymlbench.method.Method.param_groups`),
    the backbone is the group ``"backbone"`` with multiplier 1.

    Attributes:
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: base learning rate.
        weight_decay: weight decay of every group that does not set its own.
        momentum: SGD momentum (unused by Adam and AdamW).
        nesterov: Nesterov momentum (SGD only, needs ``momentum > 0``).
        epochs: number of training epochs.
        schedule: ``"cosine"`` (from ``lr`` down to ``min_lr`` over the run) or ``"constant"``.
        schedule_unit: whether the schedule moves once per ``"epoch"`` or at every ``"step"``.
        min_lr: the floor of the cosine schedule (absolute, before group multipliers).
        freeze_epochs: for this many first epochs the groups in ``freeze_groups`` are not
            stepped (MSA on Animal: the backbone for 40 epochs; HAPPIER on Product: 5).
        freeze_groups: names of the parameter groups held still during ``freeze_epochs``.
        schedule_during_freeze: ``"run"``: the schedule moves from the first epoch;
            ``"hold"``: it stays at ``lr`` during ``freeze_epochs`` and then moves as if the run
            started there, over the same total length, so the cosine ends above ``min_lr``
            (what the official HAPPIER and MSA loops do: they step no epoch schedule during
            their warm-up).
        freeze_batchnorm: keep every batch-norm layer of the backbone in eval mode (running
            statistics not updated), as the Product recipes do.
        grad_clip: clip the global gradient norm to this value; ``None`` does not clip.
        classes_per_batch: fine classes drawn per batch by the class-balanced sampler.
        images_per_class: images drawn per class; the batch holds the product.
        amp: ``"bf16"`` runs the backbone under bfloat16 autocast on CUDA (losses stay in
            float32); ``"off"`` runs everything in float32.
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = bounded(1e-3, gt=0.0)
    weight_decay: float = bounded(1e-4, ge=0.0)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    epochs: int = bounded(100, ge=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    schedule_unit: Literal["epoch", "step"] = "epoch"
    min_lr: float = bounded(0.0, ge=0.0)
    freeze_epochs: int = bounded(0, ge=0)
    freeze_groups: tuple[str, ...] = ("backbone",)
    schedule_during_freeze: Literal["run", "hold"] = "run"
    freeze_batchnorm: bool = False
    grad_clip: float | None = bounded(None, gt=0.0)
    classes_per_batch: int = bounded(64, ge=1)
    images_per_class: int = bounded(4, ge=1)
    amp: Literal["bf16", "off"] = "bf16"

    @property
    def batch_size(self) -> int:
        """Images per batch: ``classes_per_batch * images_per_class``."""
        return self.classes_per_batch * self.images_per_class

    def validate(self) -> None:
        """Check the relations between learning rates, epochs and momentum."""
        if self.min_lr > self.lr:
            raise ConfigError("min_lr", f"must be <= lr ({self.lr!r}), but got {self.min_lr!r}")
        if self.freeze_epochs >= self.epochs:
            raise ConfigError(
                "freeze_epochs",
                f"must be < epochs ({self.epochs}), but got {self.freeze_epochs}",
            )
        if self.freeze_epochs > 0 and not self.freeze_groups:
            raise ConfigError(
                "freeze_groups", "must name at least one group when freeze_epochs > 0, but got ()"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ConfigError(
                "nesterov",
                "must be false unless optimizer is 'sgd' with momentum > 0, but got true "
                f"with optimizer {self.optimizer!r} and momentum {self.momentum!r}",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig(ConfigBase):
    """How the training loop runs, evaluates, checkpoints and reports.

    Attributes:
        seed: seed of every random number generator of the run.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"`` (under
            ``torchrun`` each rank takes its local GPU).
        eval_every: evaluate every this many epochs; 0 evaluates only after the last epoch.
        report_network: which network's metrics are the run's result: ``"online"`` (the
            trained one; published MSA numbers are these) or ``"ema"`` (the EMA teacher, only
            for a method that has one).
        eval_mode: the rules of the test evaluation: ``"default"`` (the exact DyML protocol of
            :mod:`dymlbench.evaluation.protocol`) or ``"official"`` (the HAPPIER / MSA
            evaluator's, to compare with published numbers); the validation split always uses
            the default rules.
        checkpoint_every: save a resumable checkpoint every this many epochs; 0 saves only the
            last.
        num_workers: data-loading worker processes.
        progress: show progress bars.
    """

    seed: int = bounded(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int = bounded(1, ge=0)
    report_network: Literal["online", "ema"] = "online"
    eval_mode: Literal["default", "official"] = "default"
    checkpoint_every: int = bounded(1, ge=0)
    num_workers: int = bounded(8, ge=0)
    progress: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(ConfigBase):
    """Everything that defines one run; saved as ``config.yaml`` in the run folder.

    Attributes:
        method_name: registry key of the method (``"msa"``, ``"happier"``, ...).
        data: the dataset section.
        model: the backbone section.
        optim: the optimisation section.
        engine: the training-loop section.
        method: the method's own config, an instance of its registered ``config_type``; a
            mapping is built into that type.
    """

    method_name: str
    data: DataConfig
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    method: MethodConfig

    def __post_init__(self) -> None:
        from dymlbench.registry import get_method

        config_type = get_method(self.method_name).config_type
        if isinstance(self.method, Mapping):
            try:
                object.__setattr__(self, "method", config_type.from_dict(self.method))
            except ConfigError as error:
                raise error.under("method") from None
        elif type(self.method) is not config_type:
            raise ConfigTypeError(
                "method",
                f"must be a {config_type.__name__} (the config of method "
                f"{self.method_name!r}), but got {type(self.method).__name__}",
            )
        super().__post_init__()

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        """Build a run configuration from YAML text (the output of :meth:`to_yaml`)."""
        return cls.from_dict(yaml.safe_load(text))

    def to_yaml(self) -> str:
        """The configuration as YAML text, keys in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        """Read a configuration written by :meth:`write`; errors name the file."""
        try:
            return cls.from_dict(_read_yaml_mapping(path))
        except ConfigError as error:
            raise error.from_source(str(path)) from None

    def write(self, path: str | Path) -> None:
        """Write the configuration as YAML to ``path``."""
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split one ``--set`` argument into its dotted key and its value.

    The value is parsed with ``yaml.safe_load``, so ``0.01`` is a number, ``true`` a boolean,
    ``null`` is ``None`` and ``[1, 2]`` a list; it is checked against the field's type later.

    Args:
        text: ``"key=value"``, e.g. ``"optim.lr=0.01"``.

    Returns:
        The key and the parsed value.

    Example:
        >>> parse_assignment("method.margins=[0.25, 0.35]")
        ('method.margins', [0.25, 0.35])
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            "--set", f"must be given as key=value (e.g. optim.lr=0.01), but got {text!r}"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(
    config: RunConfig,
    overrides: Mapping[str, Any] | Iterable[str],
    *,
    source: str = "--set",
) -> RunConfig:
    """Return ``config`` with some keys changed, validated as a whole.

    Args:
        config: the configuration to start from.
        overrides: either ``key=value`` strings (``--set`` arguments, values parsed as YAML) or a
            mapping from dotted keys to values; a mapping value for a section (``{"optim":
            {"lr": 0.1}}``) changes only the keys it names.
        source: where the overrides come from, for error messages.

    Returns:
        A new, validated :class:`RunConfig`.

    Raises:
        UnknownKeyError: a key the configuration does not have, with the valid ones.
        ConfigError: a value of the wrong type or out of range, or a key that cannot be set
            (``method_name``, ``data.dataset``).
    """
    tree = config.to_dict()
    _apply(tree, type(config.method), overrides, source=source)
    try:
        return RunConfig.from_dict(tree)
    except ConfigError as error:
        raise error.from_source(source) from None


def resolve_config(
    *,
    method: str | None = None,
    dataset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> RunConfig:
    """Make the configuration of a run: recipe, then file, then ``--set``, then validation.

    Keys and value types are checked as each source is applied (errors say which source);
    ranges and relations between values are checked once, on the final configuration, so a
    later source may repair what an earlier one left inconsistent.

    Args:
        method: registry key of the method; may be left out when ``config_file`` names one.
        dataset: one of :data:`DATASETS`; may be left out when ``config_file`` names one.
        config_file: a YAML file, complete (a saved ``config.yaml``) or partial; its keys are
            applied over the recipe.
        overrides: ``key=value`` strings applied last, e.g. ``("optim.lr=0.01",
            "method.margin=0.2")``.

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: a missing or contradictory method or dataset, an unknown key, a value of
            the wrong type or out of range; the message names the key and where it came from.
        ValueError: an unknown method key (from the registry, with the close matches).
    """
    from dymlbench.registry import get_method

    file_data = dict(_read_yaml_mapping(config_file)) if config_file is not None else {}
    file_data_section = file_data.get("data", {})
    if not isinstance(file_data_section, Mapping):
        raise ConfigTypeError(
            "data", f"must be a mapping, but got {file_data_section!r}", source=str(config_file)
        )
    file_data["data"] = {k: v for k, v in file_data_section.items() if k != "dataset"}
    method = _agree("method_name", method, file_data.pop("method_name", None), config_file)
    dataset = _agree("data.dataset", dataset, file_data_section.get("dataset"), config_file)
    try:
        dataset = _coerce(dataset, Dataset)
    except ConfigError as error:
        raise error.under("data.dataset") from None

    method_type = get_method(method)
    recipe = method_type.recipe(dataset)
    source = f"recipe of {method!r} for {dataset!r}"
    if type(recipe.method) is not method_type.config_type:
        raise TypeError(
            f"the {source} must hold a {method_type.config_type.__name__}, "
            f"but got {type(recipe.method).__name__}"
        )
    base = RunConfig(method_name=method, data=DataConfig(dataset=dataset), method=recipe.method)
    tree = base.to_dict()
    _apply(tree, method_type.config_type, recipe.run, source=source)
    _apply(tree, method_type.config_type, file_data, source=str(config_file))
    _apply(tree, method_type.config_type, overrides, source="--set")
    return RunConfig.from_dict(tree)


def _agree(key: str, given: str | None, in_file: Any, config_file: str | Path | None) -> Any:
    if given is not None and in_file is not None and given != in_file:
        raise ConfigError(
            key,
            f"must agree with the config file, which has {in_file!r}, but got {given!r}; "
            "give only one of them",
            source=str(config_file),
        )
    value = given if given is not None else in_file
    if value is None:
        raise ConfigError(key, "must be given (or set in the config file), but it is missing")
    return value


def _apply(
    tree: dict[str, Any],
    method_config_type: type[MethodConfig],
    overrides: Mapping[str, Any] | Iterable[str],
    *,
    source: str,
) -> None:
    """Write ``overrides`` into ``tree`` (a :meth:`RunConfig.to_dict`), checking keys and types.

    Relations between values are checked later, once, when the tree is built into a config.
    """
    sections: dict[str, type[ConfigBase]] = {"": RunConfig, "method": method_config_type}
    try:
        for key, value, raw in _assignments(overrides):
            _assign(tree, sections, key, value, raw)
    except ConfigError as error:
        raise error.from_source(source) from None


def _assignments(
    overrides: Mapping[str, Any] | Iterable[str],
) -> Iterator[tuple[str, Any, str | None]]:
    """Yield ``(dotted key, value, raw text or None)``, flattening nested mappings."""
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            yield from _flatten(str(key), value, None)
        return
    if isinstance(overrides, str):
        raise TypeError(
            f"`overrides` must be a list of key=value strings, but got the string {overrides!r}"
        )
    for text in overrides:
        key, value = parse_assignment(text)
        yield from _flatten(key, value, text.partition("=")[2].strip())


def _flatten(key: str, value: Any, raw: str | None) -> Iterator[tuple[str, Any, str | None]]:
    """A mapping value changes the keys it names (none when empty), not the whole section."""
    if not isinstance(value, Mapping):
        yield key, value, raw
        return
    for sub_key, sub_value in value.items():
        yield from _flatten(f"{key}.{sub_key}", sub_value, None)


def _assign(
    tree: dict[str, Any],
    sections: dict[str, type[ConfigBase]],
    key: str,
    value: Any,
    raw: str | None,
) -> None:
    """Set ``tree[key]`` after checking that ``key`` exists and ``value`` has its type."""
    if key in _NOT_OVERRIDABLE:
        raise ConfigError(key, f"cannot be overridden: {_NOT_OVERRIDABLE[key]}")
    parts = key.split(".")
    node, section, path = tree, sections[""], ""
    for depth, part in enumerate(parts):
        if part not in section.keys():
            raise UnknownKeyError(".".join(parts[: depth + 1]), section.keys())
        path = f"{path}.{part}" if path else part
        hint = _type_hints(section)[part]
        if depth == len(parts) - 1:
            break
        section = sections.get(path) or _section_type(hint)
        if section is None:
            raise ConfigError(path, f"is a value, not a section, so `{key}` does not exist")
        if node[part] is None:  # an optional section that is unset: start from its defaults
            node[part] = {}
        node = node[part]

    try:
        coerced = _coerce(value, hint)
    except ConfigError as error:
        if raw is None or raw == value:
            raise error.under(key) from None
        try:
            coerced = _coerce(raw, hint)
        except ConfigError:
            raise error.under(key) from None
    node[parts[-1]] = _to_plain(coerced)


def _section_type(hint: Any) -> type[ConfigBase] | None:
    """The section class of a field typed ``Section`` or ``Section | None``, else ``None``."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else ()
    for candidate in (hint, *members):
        if isinstance(candidate, type) and issubclass(candidate, ConfigBase):
            return candidate
    return None


def _read_yaml_mapping(path: str | Path) -> Mapping[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError("", f"is not valid YAML: {error}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigTypeError(
            "", f"must hold a mapping of keys, but got {data!r}", source=str(path)
        )
    return data


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _to_plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_to_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(tp))
    if origin is Union or origin is types.UnionType:
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} items ({', '.join(_describe(arg) for arg in args)})"
    names = {
        bool: "a boolean (true or false)",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
        type(None): "null",
    }
    if tp in names:
        return names[tp]
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        return f"a mapping with keys {', '.join(tp.keys())}"
    return repr(tp)


def _plural(tp: Any) -> str:
    plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings", Path: "paths"}
    return plural.get(tp, _describe(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError("", f"must be {_describe(tp)}, but got {value!r}{hint}")
    if origin is Union or origin is types.UnionType:
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member)
            except ConfigError as error:
                if error.key:  # the value fits this member but is wrong inside
                    raise
        raise ConfigTypeError("", f"must be {_describe(tp)}, but got {value!r}")
    if origin is tuple:
        return _coerce_tuple(value, tp)
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp.from_dict(value)
        raise ConfigTypeError("", f"must be {_describe(tp)}, but got {value!r}")
    return _coerce_scalar(value, tp)


def _coerce_tuple(value: Any, tp: Any) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigTypeError("", f"must be {_describe(tp)}, but got {value!r}")
    args = typing.get_args(tp)
    variadic = len(args) == 2 and args[1] is Ellipsis
    if not variadic and len(value) != len(args):
        raise ConfigError("", f"must be {_describe(tp)}, but got {len(value)} items: {value!r}")
    item_types = [args[0]] * len(value) if variadic else list(args)
    items = []
    for index, (item, item_type) in enumerate(zip(value, item_types, strict=True)):
        try:
            items.append(_coerce(item, item_type))
        except ConfigError as error:
            raise error.under(str(index)) from None
    return tuple(items)


def _coerce_scalar(value: Any, tp: Any) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str):
            try:
                # PyYAML reads 1e-3 (no dot) as a string; accept it as the number it means.
                return float(value)
            except ValueError:
                ok = False
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Path:
        ok = isinstance(value, str | Path) and str(value) != ""
        value = Path(value) if ok else value
    elif tp is type(None):
        ok = value is None
    else:
        raise TypeError(f"config fields of type {tp!r} are not supported")
    if not ok:
        raise ConfigTypeError("", f"must be {_describe(tp)}, but got {value!r}")
    return value
