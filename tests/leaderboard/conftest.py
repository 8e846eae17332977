"""Fixtures of the leaderboard tests: synthetic run folders with records and per-query files.

A synthetic run looks like one ``dymlbench run`` writes (the keys of
:mod:`dymlbench.engine.records`): three levels of 40 queries each, per-query values drawn
around a quality the test chooses, and metrics that are exactly the means of those values.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

LEVELS = ("fine", "middle", "coarse")
METRICS = ("asi", "map", "map@r", "recall@1", "recall@10", "recall@20")
N_QUERIES = 40

CONFIG: dict[str, Any] = {
    "method_name": "msa",
    "data": {"dataset": "toy", "data_dir": None, "channel_order": "bgr", "toy_layout": "vehicle"},
    "model": {"backbone": "test_resnet", "embedding_dim": 96, "pretrained": "scratch"},
    "optim": {
        "optimizer": "adam",
        "lr": 0.001,
        "epochs": 2,
        "classes_per_batch": 16,
        "images_per_class": 4,
    },
    "engine": {
        "seed": 0,
        "device": "cpu",
        "eval_mode": "default",
        "report_network": "online",
        "num_workers": 8,
        "progress": False,
        "checkpoint_every": 1,
        "eval_every": 1,
    },
    "method": {"margin": 0.1},
}


def per_query_arrays(quality: float, seed: int, *, multi: bool = False) -> dict[str, np.ndarray]:
    """Per-query values around ``quality`` in [0, 1], three levels (and ``multi``)."""
    rng = np.random.default_rng(seed)
    groups = [*LEVELS, "multi"] if multi else list(LEVELS)
    arrays: dict[str, np.ndarray] = {}
    for group in groups:
        arrays[f"{group}/query_index"] = np.arange(N_QUERIES, dtype=np.int64)
        names = ("ndcg", "hap", "asi") if group == "multi" else METRICS
        for name in names:
            noise = rng.normal(0.0, 0.1, size=N_QUERIES)
            arrays[f"{group}/{name}"] = np.clip(quality + noise, 0.0, 1.0).astype(np.float64)
    return arrays


def metrics_of(arrays: dict[str, np.ndarray], *, official_multi: bool = False) -> dict:
    """The record metrics of per-query arrays: per-level means and their mean over levels."""
    metrics = {
        key: float(values.mean())
        for key, values in arrays.items()
        if not key.endswith("/query_index")
    }
    for name in METRICS:
        parts = [metrics[f"{level}/{name}"] for level in LEVELS]
        if official_multi and name == "asi":
            parts.append(metrics["multi/asi"])
        metrics[f"overall/{name}"] = float(np.mean(parts))
    return metrics


def write_run(
    root: Path,
    *,
    method: str = "msa",
    seed: int = 0,
    quality: float = 0.5,
    dataset: str = "toy",
    config: dict[str, Any] | None = None,
    per_query: bool = True,
    multi: bool = False,
    name: str | None = None,
    **extra: Any,
) -> Path:
    """Write a synthetic run folder; ``config`` entries (``{"optim": {"epochs": 5}}``) and
    ``extra`` top-level keys of the record override the defaults. Returns the run folder."""
    run_dir = root / (name or f"{method}-{dataset}-seed{seed}-q{quality}")
    run_dir.mkdir(parents=True)
    resolved = copy.deepcopy(CONFIG)
    resolved["method_name"] = method
    resolved["data"]["dataset"] = dataset
    resolved["engine"]["seed"] = seed
    for section, values in (config or {}).items():
        resolved[section].update(values)
    official = resolved["engine"]["eval_mode"] == "official"

    arrays = per_query_arrays(quality, seed, multi=multi)
    record = {
        "schema_version": 1,
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "config": resolved,
        "metrics": metrics_of(arrays, official_multi=official and multi),
        "reported_network": resolved["engine"]["report_network"],
        "n_queries": {level: N_QUERIES for level in LEVELS},
        "n_skipped_queries": {level: 0 for level in LEVELS},
        "per_query_file": "per_query.npz" if per_query else None,
        "initialisation": {"kind": "scratch", "path": None, "sha256": None},
        "hardware": {"device": "cpu", "device_name": "x86_64", "n_processes": 1, "cpu_count": 2},
        "gpu_hours": 0.0,
        "wall_seconds": 60.0,
        "packages": {"python": "3.11.7"},
        "git_commit": None,
        "git_dirty": None,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
    }
    record.update(extra)
    (run_dir / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if per_query:
        np.savez_compressed(run_dir / "per_query.npz", **arrays)
    return run_dir


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """``make_run(method=..., seed=..., quality=...)``: a synthetic run folder (``write_run``)."""
    runs = tmp_path / "runs"

    def make(**options: Any) -> Path:
        return write_run(runs, **options)

    return make


@pytest.fixture
def published_path() -> Path:
    """The committed published table."""
    return Path(__file__).resolve().parents[2] / "leaderboards" / "published.yaml"
