"""Every registered method (and the throwaway ones) trains a few steps through the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import engine_methods, tiny_overrides

from dymlbench.config import resolve_config
from dymlbench.data import load_dataset
from dymlbench.engine import NonFiniteLossError, Trainer, train
from dymlbench.engine.distributed import DistContext
from dymlbench.engine.logs import RunLogger
from dymlbench.engine.records import SCHEMA_VERSION
from dymlbench.method import Progress
from dymlbench.registry import list_methods


def first_batch_loss(config, checkpoint: dict | None) -> float:
    """The loss on the run's first batch of the network at start or after ``checkpoint``."""
    trainer = Trainer(
        config=config,
        dataset=load_dataset(config.data),
        device=torch.device("cpu"),
        context=DistContext(),
        run_logger=RunLogger(run_dir=None, progress=False),
    )
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    trainer.sampler.set_epoch(0)
    batch = next(iter(trainer.loader))
    images = trainer.normalize(batch["images"])
    progress = Progress(epoch=0, step=0, n_epochs=1, steps_per_epoch=trainer.steps_per_epoch)
    trainer.network.train()
    with torch.no_grad():
        teacher_output = trainer.teacher_output(images)
        output = trainer.network(
            images, batch["labels"], progress=progress, teacher_output=teacher_output
        )
    return float(output.loss)


METHOD_KEYS = [*list_methods(), *engine_methods().THROWAWAY]
"""Every registered method, then the throwaway ones, so the test is never vacuous."""


@pytest.mark.parametrize("method", METHOD_KEYS)
def test_every_method_trains_and_writes_its_record(
    method: str, methods, toy_root: Path, tmp_path: Path
) -> None:
    config = resolve_config(method=method, dataset="toy", overrides=tiny_overrides(toy_root))

    result = train(config, output_dir=tmp_path / "run")

    losses = [loss for epoch in result.history.train for loss in epoch["step_losses"]]
    assert len(losses) >= 6 and all(math.isfinite(loss) for loss in losses)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "epoch-0002.pt", weights_only=True)
    before, after = first_batch_loss(config, None), first_batch_loss(config, checkpoint)
    assert before == pytest.approx(losses[0], rel=1e-5)  # the same initial network and batch
    assert after < before, (before, after)
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["schema_version"] == SCHEMA_VERSION
    assert (record["method"], record["dataset"], record["seed"]) == (method, "toy", 0)
    assert record["config"] == config.to_dict()
    assert record["initialisation"]["kind"] == "scratch"
    assert record["gpu_hours"] == 0.0 and record["hardware"]["device"] == "cpu"
    assert set(record["packages"]) >= {"python", "torch", "timm", "numpy", "dymlbench"}
    assert {"git_commit", "started_at", "finished_at"} <= set(record)
    assert 0.0 <= record["metrics"]["overall/map"] <= 1.0
    with np.load(tmp_path / "run" / record["per_query_file"]) as per_query:
        for level in ("fine", "middle", "coarse"):
            counted = record["n_queries"][level] - record["n_skipped_queries"][level]
            assert per_query[f"{level}/query_index"].shape == (counted,)
            assert per_query[f"{level}/map"].mean() == pytest.approx(
                record["metrics"][f"{level}/map"]
            )
    for name in ("config.yaml", "metrics.json", "model.pt", "checkpoints/epoch-0002.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_a_teacher_method_reports_both_networks_and_logs_per_epoch(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(
        toy_root,
        **{
            "method.teacher_momentum": 0.5,
            "engine.report_network": "ema",
            "engine.eval_every": 1,
            "data.val_fraction": 0.25,
        },
    )
    config = resolve_config(method="engine-proxy", dataset="toy", overrides=overrides)

    result = train(config, output_dir=tmp_path / "run")

    assert set(result.reports) == {"online", "ema"}
    assert result.metrics == result.reports["ema"].metrics
    assert result.record["metrics_by_network"]["online"]["overall/map"] == pytest.approx(
        result.reports["online"].metrics["overall/map"]
    )
    assert [entry["epoch"] for entry in result.history.validation] == [1, 2]
    assert {"online", "ema"} <= set(result.history.validation[0])
    assert "multi/hap" in result.history.validation[0]["ema"]
    assert {"loss", "loss/proxy", "loss/align", "images_per_second", "lr"} <= set(
        result.history.train[0]
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["reported_network"] == "ema" and set(metrics["test"]) == {"online", "ema"}
    assert int(result.history.train[-1]["epoch"]) == 2


def test_a_product_layout_is_tested_leave_one_out(methods, tmp_path: Path) -> None:
    from engine_support import make_small_toy

    root = make_small_toy(tmp_path / "product", layout="product")
    overrides = tiny_overrides(root, **{"optim.epochs": 1})
    config = resolve_config(method="engine-pair", dataset="toy", overrides=overrides)

    result = train(config, output_dir=tmp_path / "run")

    assert result.reports["online"].protocol == "leave_one_out"
    assert "multi/hap" in result.metrics and "coarse/map" in result.metrics


def test_a_non_finite_loss_stops_the_run_at_its_step(
    methods, monkeypatch: pytest.MonkeyPatch, toy_root: Path, tmp_path: Path
) -> None:
    proxy = engine_methods().ProxyToy
    original = proxy.training_step

    def poisoned(self, batch):
        output = original(self, batch)
        if batch.progress.step == 2:
            return type(output)(loss=output.loss * float("nan"), logs=output.logs)
        return output

    monkeypatch.setattr(proxy, "training_step", poisoned)
    config = resolve_config(
        method="engine-proxy", dataset="toy", overrides=tiny_overrides(toy_root)
    )

    with pytest.raises(NonFiniteLossError, match="at step 2 .*last finite values were at step 1"):
        train(config, output_dir=tmp_path / "run")


@pytest.mark.parametrize(
    ("batchnorm", "freeze", "expected"),
    [("batch", False, True), ("running", False, False), ("batch", True, False)],
    ids=["batch-statistics", "running-statistics", "frozen-batchnorm-wins"],
)
def test_the_teacher_normalises_with_the_statistics_its_spec_names(
    methods, toy_root: Path, tmp_path: Path, monkeypatch, batchnorm, freeze, expected
) -> None:
    from dymlbench.method import Network

    modes: list[bool] = []
    original = Network.teacher_output

    def recording(self, images):
        layers = [m for m in self.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        modes.extend(layer.training for layer in layers)
        return original(self, images)

    monkeypatch.setattr(Network, "teacher_output", recording)
    overrides = tiny_overrides(
        toy_root,
        **{
            "method.teacher_momentum": 0.5,
            "method.teacher_batchnorm": batchnorm,
            "optim.freeze_batchnorm": freeze,
            "optim.epochs": 1,
        },
    )
    config = resolve_config(method="engine-proxy", dataset="toy", overrides=overrides)

    result = train(config, output_dir=tmp_path / "run")

    assert modes and set(modes) == {expected}
    assert set(result.reports) == {"online", "ema"}
