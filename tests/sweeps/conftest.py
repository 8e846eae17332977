"""The sweep tests' helpers (``helpers.py``), importable as ``sweep_helpers``; the toy dataset
and method fixtures come from ``tests/conftest.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sweep_helpers", Path(__file__).with_name("helpers.py")
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
sys.modules["sweep_helpers"] = _helpers  # the test modules import it by this name
