"""Search-space files: one YAML mapping from dotted config keys to distributions or values.

A space file (``sweeps/<method>.yaml``) maps keys of the method's run configuration
(:class:`dymlbench.config.RunConfig`, ``method.*`` included) to what a trial takes for them::

    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}     # log-uniform
    optim.weight_decay: {type: float, low: 0.0, high: 1.0e-3}         # uniform
    method.margin: {type: float, low: 0.05, high: 0.3, step: 0.05}    # on a grid
    optim.classes_per_batch: {type: int, low: 8, high: 32, step: 8}
    model.embedding_dim: {type: categorical, choices: [256, 512]}
    method.margins: {type: categorical, choices: [[0.25, 0.35, 0.45], [0.2, 0.3, 0.4]]}
    optim.epochs: 30                                                  # a fixed value

A mapping is a distribution (``type`` ``float``, ``int`` or ``categorical``, with Optuna's
meaning); anything else (a number, a string, a list) is a fixed value every trial takes.
Categorical choices are scalars, or lists for tuple-valued keys (stored in the study as their
JSON text, decoded when applied).

Every entry is checked when the file is read, against the resolved configuration the sweep
starts from: the key must exist (an unknown key lists the valid ones), the fields of the
distribution must make sense (``low <= high``, ``log`` only with ``low > 0`` and no ``step``,
no field that Optuna would not take), and every end of a range, every choice and every fixed
value must be a valid value of the key (its type and its bounds). Errors name the file and the
line. Relations between keys (``optim.min_lr <= optim.lr``) are checked per trial, where a
violation fails that trial with the configuration's own message.

Keys a sweep sets itself cannot appear: ``engine.seed`` (derived per trial from the study seed),
``data.val_fraction`` and ``data.val_seed`` (every trial must see the same validation split;
``dymlbench sweep --val-fraction`` sets it), and the keys no run can override
(``method_name``, ``data.dataset``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from dymlbench.config import ConfigError, RunConfig, UnknownKeyError, apply_overrides

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

Kind = Literal["float", "int", "categorical", "fixed"]

RESERVED_KEYS = {
    "engine.seed": "each trial's seed is derived from the study seed (`--seed`)",
    "data.val_fraction": "every trial must see the same validation split; use `--val-fraction`",
    "data.val_seed": "every trial must see the same validation split",
}
"""Keys a space file cannot set, with the reason."""

_FIELDS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the line."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Param:
    """One entry of a space file.

    Attributes:
        key: the dotted config key (``optim.lr``).
        kind: ``"float"``, ``"int"``, ``"categorical"`` or ``"fixed"``.
        line: the line of the entry in its file, from 1.
        low: the low end of a ``float`` or ``int`` range.
        high: the high end (included).
        log: sample on a log scale.
        step: the grid step of the range, or ``None``.
        choices: the choices of a ``categorical`` entry, as given (lists stay lists).
        value: the value of a ``fixed`` entry.
    """

    key: str
    kind: Kind
    line: int
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    @property
    def stored_choices(self) -> tuple[Any, ...]:
        """The choices as the study stores them: lists as their JSON text."""
        return tuple(_encode(choice) for choice in self.choices)

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of a ``float``, ``int`` or ``categorical`` entry."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        if self.kind == "categorical":
            return CategoricalDistribution(self.stored_choices)
        raise ValueError(f"the fixed entry `{self.key}` has no distribution")

    def decode(self, stored: Any) -> Any:
        """The config value of a parameter value the study holds (JSON text back to a list)."""
        if self.kind == "categorical":
            for choice in self.choices:
                if _encode(choice) == stored:
                    return choice
        return stored

    def to_dict(self) -> Any:
        """The entry as it would be written in a space file (a fixed entry: its value)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        entry: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            entry["log"] = True
        if self.step is not None:
            entry["step"] = self.step
        return entry


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """The entries of one space file.

    Attributes:
        path: the file it was read from.
        params: the entries in file order.
    """

    path: Path
    params: tuple[Param, ...]

    @property
    def swept(self) -> tuple[Param, ...]:
        """The entries with a distribution."""
        return tuple(param for param in self.params if param.kind != "fixed")

    def fixed(self) -> dict[str, Any]:
        """The fixed values by key."""
        return {param.key: param.value for param in self.params if param.kind == "fixed"}

    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distribution of every swept key."""
        return {param.key: param.distribution() for param in self.swept}

    def overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Config overrides (dotted key to value) of a trial's parameters."""
        by_key = {param.key: param for param in self.swept}
        return {
            key: by_key[key].decode(value) if key in by_key else value
            for key, value in params.items()
        }

    def without(self, keys: set[str]) -> SearchSpace:
        """The space less the entries of ``keys`` (keys that flags or ``--set`` decide)."""
        return SearchSpace(
            path=self.path, params=tuple(p for p in self.params if p.key not in keys)
        )

    def to_dict(self) -> dict[str, Any]:
        """Every entry by key, as :meth:`Param.to_dict`."""
        return {param.key: param.to_dict() for param in self.params}


def load_space(path: str | Path, *, base: RunConfig) -> SearchSpace:
    """Read and check a space file against the configuration a sweep starts from.

    Args:
        path: the YAML file.
        base: the resolved configuration of the method on the dataset (recipe and overrides);
            every value of the file is checked as an override of it.

    Returns:
        The checked space.

    Raises:
        FileNotFoundError: the file does not exist.
        SpaceError: a YAML error, a duplicate, unknown or reserved key, a malformed
            distribution, or a value that the key cannot take; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the search-space file `{path}` must exist, but it does not")
    loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as error:
            raise SpaceError(f"{path}: must be valid YAML, but {error}") from None
        if root is None:
            return SearchSpace(path=path, params=())
        if not isinstance(root, yaml.MappingNode):
            raise SpaceError(
                f"{path}, line {root.start_mark.line + 1}: the file must be a mapping from "
                "dotted config keys (`optim.lr`) to distributions or values, but it is not"
            )
        params: list[Param] = []
        seen: dict[str, int] = {}
        for key_node, value_node in root.value:
            line = key_node.start_mark.line + 1
            key = loader.construct_object(key_node, deep=True)
            where = f"{path}, line {line}"
            if not isinstance(key, str):
                raise SpaceError(f"{where}: a key must be a dotted string, but got {key!r}")
            if key in seen:
                raise SpaceError(
                    f"{where}: `{key}` must appear once, but it is also on line {seen[key]}"
                )
            seen[key] = line
            if key in RESERVED_KEYS:
                raise SpaceError(f"{where}: `{key}` cannot be swept: {RESERVED_KEYS[key]}")
            params.append(_read_entry(loader, key, value_node, where=where, line=line))
    finally:
        loader.dispose()

    for param in params:
        _check_values(param, base, where=f"{path}, line {param.line}")
    return SearchSpace(path=path, params=tuple(params))


def _read_entry(
    loader: yaml.SafeLoader, key: str, node: yaml.Node, *, where: str, line: int
) -> Param:
    value = loader.construct_object(node, deep=True)
    if not isinstance(value, Mapping):
        return Param(key=key, kind="fixed", line=line, value=value)

    kind = value.get("type")
    if kind not in _FIELDS:
        raise SpaceError(
            f"{where}: `{key}` must have a `type` of float, int or categorical (or be a plain "
            f"value, which every trial takes), but got {kind!r}"
        )
    for field in value:
        if field not in _FIELDS[kind]:
            raise SpaceError(
                f"{where}: `{key}` has the unknown field `{field}`; a {kind} distribution takes "
                f"{', '.join(_FIELDS[kind])}"
            )
    if kind == "categorical":
        choices = value.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: `{key}` must list its `choices`, but got {choices!r}")
        encoded = [_encode(choice) for choice in choices]
        if len(set(map(repr, encoded))) != len(encoded):
            raise SpaceError(f"{where}: the `choices` of `{key}` must differ, but got {choices}")
        return Param(key=key, kind="categorical", line=line, choices=tuple(choices))
    return _read_range(key, kind, value, where=where, line=line)


def _read_range(key: str, kind: Kind, value: Mapping[str, Any], *, where: str, line: int) -> Param:
    number = int if kind == "int" else (int, float)
    for field in ("low", "high"):
        item = value.get(field)
        if isinstance(item, str) and kind == "float":
            item = _float_or_none(item)  # PyYAML reads 1e-3 (no dot) as a string
        if isinstance(item, bool) or not isinstance(item, number) or not math.isfinite(item):
            what = "an integer" if kind == "int" else "a finite number"
            raise SpaceError(f"{where}: the `{field}` of `{key}` must be {what}, but got {item!r}")
    low, high = _number(value["low"]), _number(value["high"])
    log = value.get("log", False)
    step = value.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: the `log` of `{key}` must be true or false, but got {log!r}")
    if low > high:
        raise SpaceError(
            f"{where}: the `low` of `{key}` must be <= its `high` ({high!r}), but got {low!r}"
        )
    if log and low <= 0:
        raise SpaceError(
            f"{where}: the `low` of `{key}` must be > 0 on a log scale, but got {low!r}"
        )
    if step is not None:
        if isinstance(step, str):
            step = _float_or_none(step)
        valid = int if kind == "int" else (int, float)
        if isinstance(step, bool) or not isinstance(step, valid) or not step > 0:
            raise SpaceError(f"{where}: the `step` of `{key}` must be > 0, but got {step!r}")
        if log:
            raise SpaceError(
                f"{where}: `{key}` must not have both `log: true` and a `step`; drop one"
            )
    return Param(
        key=key,
        kind=kind,
        line=line,
        low=int(low) if kind == "int" else float(low),
        high=int(high) if kind == "int" else float(high),
        log=log,
        step=None if step is None else (int(step) if kind == "int" else float(step)),
    )


def _check_values(param: Param, base: RunConfig, *, where: str) -> None:
    """Each end, choice or fixed value must be a value of the key (its type and bounds)."""
    if param.kind == "fixed":
        candidates = [("the value", param.value)]
    elif param.kind == "categorical":
        candidates = [(f"the choice {choice!r}", choice) for choice in param.choices]
    else:
        candidates = [("the `low`", param.low), ("the `high`", param.high)]
    for what, candidate in candidates:
        try:
            apply_overrides(base, {param.key: candidate}, source=where)
        except UnknownKeyError as error:
            raise SpaceError(str(error)) from None
        except ConfigError as error:
            # A relation with another key (min_lr <= lr) may be repaired by another swept key:
            # it is checked per trial. Only the key's own type and bounds are checked here.
            if error.key == param.key or error.key.startswith(f"{param.key}."):
                raise SpaceError(f"{error} ({what} of the entry)") from None


def _encode(choice: Any) -> Any:
    return json.dumps(choice) if isinstance(choice, list | tuple) else choice


def _number(value: Any) -> float:
    return float(value) if isinstance(value, str) else value


def _float_or_none(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text
