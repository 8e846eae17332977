"""Reference cases recorded from the official loss implementations, one test parameter each.

A test that takes an argument named in :data:`CASE_FILES` runs once per case of every file
matching that pattern under ``tests/data/reference`` (format: that folder's README, sections 2
and 5 to 8), so a new file of the same format is picked up and checked without edits here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REFERENCE_DIR = Path(__file__).parents[1] / "data" / "reference"

CASE_FILES = {
    "msa_case": "msa_loss_*.json",
    "csl_case": "csl_loss_*.json",
    "hap_case": "hap_loss_*.json",
}
"""Test argument name -> glob of the reference files whose cases it receives."""

LOSS_RTOL = 1e-5
"""Relative tolerance on every loss value (reference README, section 8)."""

GRADIENT_RTOL = 2e-5
"""Gradient tolerance, as a fraction of the tensor's largest absolute reference gradient."""


@dataclass(frozen=True)
class ReferenceCase:
    """One case of a reference file, with typed access to its arrays and the checks."""

    name: str
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def tensor(self, *keys: str) -> torch.Tensor:
        """The array at ``data[keys[0]][keys[1]]...``: floats as float32, integers as int64.

        Float32 arrays are stored as their shortest round-trip decimals, so they are parsed as
        doubles and then cast to float32 to get the exact bits back.
        """
        value = functools.reduce(lambda node, key: node[key], keys, self.data)
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.integer):
            return torch.from_numpy(array.astype(np.int64))
        return torch.from_numpy(array.astype(np.float64)).to(torch.float32)

    def assert_loss(self, actual: torch.Tensor, *keys: str) -> None:
        """Check a loss value against the reference value at ``keys``."""
        expected = self.tensor(*keys).double()
        torch.testing.assert_close(
            actual.detach().double(), expected, rtol=LOSS_RTOL, atol=0.0, msg=_message(keys)
        )

    def assert_gradient(self, actual: torch.Tensor | None, *keys: str) -> None:
        """Check a gradient against the reference at ``keys``, relative to its largest entry."""
        assert actual is not None, f"no gradient reached {'/'.join(keys)}"
        expected = self.tensor(*keys).double()
        atol = GRADIENT_RTOL * expected.abs().max().item()
        torch.testing.assert_close(
            actual.double(), expected, rtol=0.0, atol=atol, msg=_message(keys)
        )


def _message(keys: tuple[str, ...]) -> Any:
    return lambda details: f"{'/'.join(keys)}: {details}"


@functools.cache
def _load_cases(pattern: str) -> tuple[ReferenceCase, ...]:
    cases = []
    for path in sorted(REFERENCE_DIR.glob(pattern)):
        file_cases = json.loads(path.read_text())["cases"]
        for index, case in enumerate(file_cases):
            suffix = f"-{case.get('name', index)}" if len(file_cases) > 1 else ""
            cases.append(ReferenceCase(name=f"{path.stem}{suffix}", data=case))
    return tuple(cases)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for argument, pattern in CASE_FILES.items():
        if argument in metafunc.fixturenames:
            cases = _load_cases(pattern)
            metafunc.parametrize(argument, cases, ids=[case.name for case in cases])
