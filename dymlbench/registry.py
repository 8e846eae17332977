"""The method registry: keys to :class:`dymlbench.method.Method` subclasses.

A method registers itself with a decorator and an explicit key::

    @register_method("msa")
    class MSA(Method):
        ...

Methods are discovered on first use (:func:`get_method`, :func:`list_methods`):

- every submodule of the built-in ``methods`` package is imported (there may be none);
- every entry point of the group ``dymlbench.methods`` is loaded, so a package outside this
  repository adds a method by declaring, in its ``pyproject.toml``::

      [project.entry-points."dymlbench.methods"]
      my_method = "my_package.my_module"            # a module that registers on import
      other = "my_package.other:OtherMethod"        # or a Method subclass, registered as `other`

A duplicate key is an error; an unknown key is an error that lists the close matches and the
registered keys. A built-in module that fails to import raises; a third-party entry point that
fails to load is logged and named in the unknown-key error, so one broken plugin does not stop
the others.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import pkgutil
import re
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from dymlbench.config import MethodConfig
from dymlbench.method import Method

logger = logging.getLogger(__name__)

METHOD_ENTRY_POINT_GROUP = "dymlbench.methods"
"""The entry-point group third-party packages declare their methods under."""

BUILTIN_METHODS_PACKAGE = "methods"
"""The package whose submodules are the built-in methods."""

_KEY_PATTERN = re.compile(r"[a-z][a-z0-9_-]*")

M = TypeVar("M", bound=type[Method])


class MethodRegistry:
    """Keys to method classes, filled by :meth:`register` and by discovery.

    Args:
        package: the package whose submodules are imported on discovery, or ``None``.
        entry_point_group: the entry-point group loaded on discovery, or ``None``.
    """

    def __init__(
        self,
        *,
        package: str | None = BUILTIN_METHODS_PACKAGE,
        entry_point_group: str | None = METHOD_ENTRY_POINT_GROUP,
    ) -> None:
        self.package = package
        self.entry_point_group = entry_point_group
        self._methods: dict[str, type[Method]] = {}
        self._failed: dict[str, str] = {}
        self._discovered = False

    def register(self, key: str) -> Callable[[M], M]:
        """A class decorator that registers a :class:`Method` subclass under ``key``.

        Args:
            key: lower case, starting with a letter; letters, digits, ``_`` and ``-``.

        Returns:
            The decorator; it returns the class unchanged.

        Raises:
            ValueError: a malformed key, or a key another class already holds.
            TypeError: the class is not a complete :class:`Method` subclass.
        """
        if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
            raise ValueError(
                "`key` must be lower case, start with a letter and hold only letters, digits, "
                f"'_' and '-', but got {key!r}"
            )

        def decorator(cls: M) -> M:
            _check_method_class(key, cls)
            existing = self._methods.get(key)
            if existing is not None and not _same_definition(existing, cls):
                raise ValueError(
                    f"method key {key!r} must be unique, but it is already registered by "
                    f"{_qualified(existing)}; choose another key for {_qualified(cls)}"
                )
            self._methods[key] = cls
            return cls

        return decorator

    def get(self, key: str) -> type[Method]:
        """The method class registered under ``key`` (discovering methods first).

        Raises:
            ValueError: ``key`` is not registered; the message lists the close matches, the
                registered keys and any entry point that failed to load.
        """
        self.discover()
        if key in self._methods:
            return self._methods[key]
        known = sorted(self._methods)
        close = difflib.get_close_matches(str(key), known, n=3)
        message = f"`method` must be a registered method key, but got {key!r}"
        if close:
            message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        message += f" Registered methods: {', '.join(known) if known else 'none'}."
        if self._failed:
            failures = "; ".join(f"{name}: {why}" for name, why in sorted(self._failed.items()))
            message += f" Entry points that failed to load: {failures}."
        raise ValueError(message)

    def keys(self) -> tuple[str, ...]:
        """The registered keys, sorted (discovering methods first)."""
        self.discover()
        return tuple(sorted(self._methods))

    def discover(self) -> None:
        """Import the built-in method modules and load the entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        if self.package is not None:
            self._import_package(self.package)
        if self.entry_point_group is not None:
            self._load_entry_points(self.entry_point_group)

    def _import_package(self, name: str) -> None:
        try:
            package = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            logger.debug("no built-in methods package %r", name)
            return
        for info in pkgutil.iter_modules(getattr(package, "__path__", []), f"{name}."):
            importlib.import_module(info.name)

    def _load_entry_points(self, group: str) -> None:
        for entry_point in metadata.entry_points(group=group):
            try:
                loaded = entry_point.load()
            except Exception as error:  # a broken plugin must not stop the others
                self._failed[entry_point.name] = f"{type(error).__name__}: {error}"
                logger.warning(
                    "could not load method entry point %r (%s): %s: %s",
                    entry_point.name,
                    entry_point.value,
                    type(error).__name__,
                    error,
                )
                continue
            if isinstance(loaded, types.ModuleType):
                continue
            if isinstance(loaded, type) and issubclass(loaded, Method):
                if not any(cls is loaded for cls in self._methods.values()):
                    self.register(entry_point.name)(loaded)
                continue
            self._failed[entry_point.name] = (
                f"must point to a module or a Method subclass, but {entry_point.value!r} is a "
                f"{type(loaded).__name__}"
            )
            logger.warning(
                "method entry point %r: %s", entry_point.name, self._failed[entry_point.name]
            )


METHODS = MethodRegistry()
"""The registry :func:`register_method`, :func:`get_method` and :func:`list_methods` use."""


def register_method(key: str) -> Callable[[M], M]:
    """Register a :class:`Method` subclass under ``key``: ``@register_method("msa")``.

    Args:
        key: the method's key, as typed on the command line (``dymlbench run msa``).

    Returns:
        A class decorator that returns the class unchanged.
    """
    return METHODS.register(key)


def get_method(key: str) -> type[Method]:
    """The method class registered under ``key``; an unknown key lists the close matches."""
    return METHODS.get(key)


def list_methods() -> tuple[str, ...]:
    """The keys of every registered method, sorted."""
    return METHODS.keys()


def _check_method_class(key: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"method {key!r} must be a subclass of Method, but got {cls!r}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"method {key!r} ({_qualified(cls)}) must implement {missing}")
    citation = getattr(cls, "citation", None)
    if not isinstance(citation, str) or not citation.strip():
        raise TypeError(
            f"method {key!r} ({_qualified(cls)}) must set `citation` to the paper it comes "
            f"from, but got {citation!r}"
        )
    config_type = getattr(cls, "config_type", None)
    is_frozen_dataclass = (
        isinstance(config_type, type)
        and issubclass(config_type, MethodConfig)
        and getattr(getattr(config_type, "__dataclass_params__", None), "frozen", False)
    )
    if not is_frozen_dataclass:
        raise TypeError(
            f"method {key!r} ({_qualified(cls)}) must set `config_type` to a frozen dataclass "
            f"subclassing MethodConfig, but got {config_type!r}"
        )


def _same_definition(a: type, b: type) -> bool:
    """Whether two classes are one definition imported twice (under two module names)."""
    if a is b:
        return True
    try:
        same_file = Path(inspect.getfile(a)).resolve() == Path(inspect.getfile(b)).resolve()
    except (TypeError, OSError):
        return False
    return same_file and a.__qualname__ == b.__qualname__


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
