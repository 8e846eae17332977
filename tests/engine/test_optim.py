"""Per-group learning rates, schedules, the warm-up freeze, batch-norm freezing and clipping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import engine_methods, tiny_overrides

from dymlbench.config import ConfigError, OptimConfig, resolve_config
from dymlbench.engine import train
from dymlbench.engine.optim import LRSchedule, build_optimizer, drop_frozen_gradients
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import Progress
from dymlbench.models import create_backbone, feature_dim

HIERARCHY = Hierarchy.from_labels(np.array([[0, 0, 0], [1, 0, 0], [2, 1, 1]]))


def _parts():
    backbone = create_backbone(name="test_resnet")
    module = engine_methods()
    method = module.ProxyToy(
        config=module.ProxyToyConfig(),
        feature_dim=feature_dim(backbone),
        embedding_dim=4,
        hierarchy=HIERARCHY,
    )
    return backbone, method


def test_groups_get_their_multiplier_and_the_cosine_schedule(methods) -> None:
    backbone, method = _parts()
    optim = OptimConfig(optimizer="sgd", lr=0.1, min_lr=0.01, epochs=4, weight_decay=1e-4)
    optimizer = build_optimizer(backbone=backbone, method=method, optim=optim)
    optimizer.param_groups[1]["lr_mult"] = 4.0  # as a method's group with lr_mult 4 would

    schedule = LRSchedule(optim, steps_per_epoch=10)
    rates = []
    for epoch in range(4):
        schedule.apply(
            optimizer, Progress(epoch=epoch, step=10 * epoch, n_epochs=4, steps_per_epoch=10)
        )
        rates.append([group["lr"] for group in optimizer.param_groups])

    assert [group["name"] for group in optimizer.param_groups] == ["backbone", "heads"]
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert [r[0] for r in rates] == pytest.approx(expected)
    assert [r[1] for r in rates] == pytest.approx([4 * value for value in expected])
    per_step = LRSchedule(OptimConfig(lr=1.0, epochs=1, schedule_unit="step"), steps_per_epoch=4)
    middle = Progress(epoch=0, step=2, n_epochs=1, steps_per_epoch=4)
    assert per_step.base_lr(middle) == pytest.approx(0.5)
    constant = LRSchedule(OptimConfig(lr=0.3, schedule="constant"), steps_per_epoch=4)
    assert constant.base_lr(middle) == 0.3


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_a_held_schedule_starts_its_cosine_after_the_freeze(unit: str) -> None:
    optim = OptimConfig(
        lr=1.0, epochs=4, freeze_epochs=2, schedule_during_freeze="hold", schedule_unit=unit
    )
    schedule = LRSchedule(optim, steps_per_epoch=2)

    rates = [
        schedule.base_lr(Progress(epoch=step // 2, step=step, n_epochs=4, steps_per_epoch=2))
        for step in range(8)
    ]

    # The official loops: no epoch schedule step during the warm-up, the same T_max after it.
    if unit == "epoch":
        expected = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, *[(1 + math.cos(math.pi / 4)) / 2] * 2]
    else:
        expected = [1.0] * 5 + [(1 + math.cos(math.pi * k / 8)) / 2 for k in (1, 2, 3)]
    assert rates == pytest.approx(expected)
    running = LRSchedule(OptimConfig(lr=1.0, epochs=4, freeze_epochs=2), steps_per_epoch=2)
    assert running.base_lr(Progress(epoch=2, step=4, n_epochs=4, steps_per_epoch=2)) == 0.5


def test_unknown_freeze_groups_are_errors(methods) -> None:
    backbone, method = _parts()
    optim = OptimConfig(epochs=3, freeze_epochs=1, freeze_groups=("backbnoe",))

    with pytest.raises(ConfigError, match=r"optim.freeze_groups.*\(backbone, heads\)"):
        build_optimizer(backbone=backbone, method=method, optim=optim)


def test_frozen_groups_are_not_stepped(methods) -> None:
    backbone, method = _parts()
    optimizer = build_optimizer(backbone=backbone, method=method, optim=OptimConfig(lr=0.1))
    before = [p.detach().clone() for p in backbone.parameters()]
    head_before = method.head.weight.detach().clone()
    loss = method.head(backbone(torch.randn(2, 3, 32, 32))).square().sum()
    loss.backward()

    drop_frozen_gradients(optimizer, frozenset({"backbone"}))
    optimizer.step()

    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters(), strict=True))
    assert not torch.equal(head_before, method.head.weight)


def test_warm_up_and_batchnorm_freezing_in_a_run_with_clipping_on(
    methods, toy_root: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(
        toy_root,
        **{
            "optim.freeze_epochs": 1,
            "optim.freeze_batchnorm": True,
            "optim.grad_clip": 0.5,
            "optim.epochs": 2,
            "engine.checkpoint_every": 1,
        },
    )
    config = resolve_config(method="engine-proxy", dataset="toy", overrides=overrides)
    torch.manual_seed(config.engine.seed)
    initial = create_backbone(name="test_resnet").state_dict()

    train(config, output_dir=tmp_path / "run")

    first = torch.load(tmp_path / "run" / "checkpoints" / "epoch-0001.pt", weights_only=True)
    second = torch.load(tmp_path / "run" / "checkpoints" / "epoch-0002.pt", weights_only=True)
    after_warm_up = {k.removeprefix("backbone."): v for k, v in first["network"].items()}
    after_run = {k.removeprefix("backbone."): v for k, v in second["network"].items()}
    for key, value in initial.items():
        assert torch.equal(after_warm_up[key], value), key  # weights and running statistics
        if "running" in key:
            assert torch.equal(after_run[key], value), key  # batch norm frozen throughout
    moved = [
        key for key in initial if "weight" in key and not torch.equal(after_run[key], initial[key])
    ]
    assert moved, "the backbone must be stepped after the warm-up"
    assert not torch.equal(
        first["network"]["method.head.weight"], second["network"]["method.head.weight"]
    )
