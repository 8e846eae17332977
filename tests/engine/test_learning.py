"""After the toy recipe, every method retrieves clearly better than its untrained network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import engine_methods

from dymlbench.config import resolve_config
from dymlbench.data import load_dataset
from dymlbench.engine import build_network, train
from dymlbench.engine.evaluate import evaluate_test
from dymlbench.engine.loop import seed_everything
from dymlbench.registry import list_methods

MARGIN = 0.05
"""How much higher the trained network's overall mAP must be, absolute (5 points)."""

FAST_RECIPE = {"optim.epochs": 4, "optim.lr": 3e-3}
"""The throwaway methods' toy recipe, made long enough to learn, on the small toy set."""

CASES = [
    *(pytest.param(key, marks=pytest.mark.slow, id=key) for key in list_methods()),
    *(pytest.param(key, id=key) for key in engine_methods().THROWAWAY),
]


def untrained_map(config, dataset) -> float:
    """The overall test mAP of the network the run starts from (same seed, same weights)."""
    seed_everything(config.engine.seed)
    network, _, _ = build_network(
        config, dataset.train.hierarchy, device=torch.device("cpu"), total_steps=1
    )
    report = evaluate_test(network, dataset, device=torch.device("cpu"), batch_size=64)
    return report.metrics["overall/map"]


@pytest.mark.parametrize("method", CASES)
def test_training_beats_the_untrained_network(
    method: str, methods, toy_root: Path, tmp_path: Path
) -> None:
    if method in engine_methods().THROWAWAY:
        overrides = [f"data.data_dir={toy_root}", *(f"{k}={v}" for k, v in FAST_RECIPE.items())]
    else:  # the method's own toy recipe, on the default toy dataset
        overrides = ["engine.progress=false", "engine.device=cpu"]
    config = resolve_config(method=method, dataset="toy", overrides=overrides)
    before = untrained_map(config, load_dataset(config.data))

    result = train(config, output_dir=tmp_path / "run")

    assert result.metrics["overall/map"] > before + MARGIN, (before, result.metrics)
