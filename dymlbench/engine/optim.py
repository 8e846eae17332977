"""Optimiser, per-group learning rates, the schedule and the warm-up freeze.

The optimiser has one parameter group per named group: ``"backbone"`` (multiplier 1) and the
method's groups (:func:`dymlbench.method.checked_param_groups`). A group's learning rate is
``schedule(t) * lr_mult``, where the schedule goes from ``optim.lr`` down to ``optim.min_lr``
along a half cosine (or stays at ``optim.lr``), ``t`` counting epochs or optimiser steps
(``optim.schedule_unit``). For the first ``optim.freeze_epochs`` epochs the groups named in
``optim.freeze_groups`` are not stepped: their gradients are dropped before the optimiser step,
so neither their weights, nor their momentum, nor their weight decay move.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dymlbench.config import ConfigError, OptimConfig
from dymlbench.method import BACKBONE_GROUP, Method, Progress, checked_param_groups


def build_optimizer(
    *, backbone: nn.Module, method: Method, optim: OptimConfig
) -> torch.optim.Optimizer:
    """The optimiser of ``optim.optimizer`` with one parameter group per named group.

    The groups are ``"backbone"`` (multiplier 1, ``optim.weight_decay``) then the method's
    (:func:`dymlbench.method.checked_param_groups`); each torch parameter group carries its
    ``name`` and ``lr_mult`` besides its hyperparameters. Empty groups are left out.

    Args:
        backbone: the backbone (its trainable parameters form the group ``"backbone"``).
        method: the built method.
        optim: the optimisation section.

    Raises:
        ConfigError: ``optim.freeze_groups`` names a group that does not exist.
        ValueError: the method's groups are inconsistent (from ``checked_param_groups``).
    """
    backbone_params = [param for param in backbone.parameters() if param.requires_grad]
    groups = [(BACKBONE_GROUP, backbone_params, 1.0, None)] + [
        (group.name, list(group.params), group.lr_mult, group.weight_decay)
        for group in checked_param_groups(method)
    ]
    names = [name for name, *_ in groups]
    if optim.freeze_epochs > 0:
        unknown = [name for name in optim.freeze_groups if name not in names]
        if unknown:
            raise ConfigError(
                "optim.freeze_groups",
                f"must name parameter groups of this run ({', '.join(names)}), but got {unknown}",
            )
    torch_groups: list[dict[str, Any]] = [
        {
            "params": params,
            "name": name,
            "lr_mult": lr_mult,
            "lr": optim.lr * lr_mult,
            "weight_decay": optim.weight_decay if weight_decay is None else weight_decay,
        }
        for name, params, lr_mult, weight_decay in groups
        if params
    ]
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            torch_groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov
        )
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(torch_groups, lr=optim.lr)
    return torch.optim.Adam(torch_groups, lr=optim.lr)


class LRSchedule:
    """The learning rate of every group as a function of where the run is.

    The schedule is a pure function of the epoch and step, so resuming needs only the
    position, which :meth:`state_dict` holds for a check.

    Args:
        optim: the optimisation section.
        steps_per_epoch: optimiser steps per epoch.

    Example:
        >>> schedule = LRSchedule(OptimConfig(lr=1.0, min_lr=0.0, epochs=2), steps_per_epoch=1)
        >>> [schedule.base_lr(Progress(epoch=e, step=e, n_epochs=2, steps_per_epoch=1))
        ...  for e in (0, 1)]
        [1.0, 0.5]
    """

    def __init__(self, optim: OptimConfig, *, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be positive, but got {steps_per_epoch}")
        self.optim = optim
        self.steps_per_epoch = steps_per_epoch
        self.last_step = -1

    def base_lr(self, progress: Progress) -> float:
        """The learning rate before group multipliers at ``progress``."""
        optim = self.optim
        if optim.schedule == "constant":
            return optim.lr
        held = optim.freeze_epochs if optim.schedule_during_freeze == "hold" else 0
        if optim.schedule_unit == "epoch":
            position, total = max(progress.epoch - held, 0), optim.epochs
        else:
            steps = self.steps_per_epoch
            position, total = max(progress.step - held * steps, 0), optim.epochs * steps
        cosine = (1.0 + math.cos(math.pi * min(position / total, 1.0))) / 2.0
        return optim.min_lr + (optim.lr - optim.min_lr) * cosine

    def apply(self, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
        """Set every group's learning rate for the step at ``progress``."""
        base = self.base_lr(progress)
        for group in optimizer.param_groups:
            group["lr"] = base * group["lr_mult"]
        self.last_step = progress.step

    def state_dict(self) -> dict[str, Any]:
        """The last step the schedule was applied at."""
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.last_step = int(state["last_step"])


def frozen_groups(optim: OptimConfig, epoch: int) -> frozenset[str]:
    """The names of the groups not stepped during ``epoch``.

    Example:
        >>> sorted(frozen_groups(OptimConfig(epochs=3, freeze_epochs=1), 0))
        ['backbone']
    """
    return frozenset(optim.freeze_groups) if epoch < optim.freeze_epochs else frozenset()


def drop_frozen_gradients(optimizer: torch.optim.Optimizer, frozen: frozenset[str]) -> None:
    """Set the gradients of the groups in ``frozen`` to ``None`` so the optimiser skips them."""
    if not frozen:
        return
    for group in optimizer.param_groups:
        if group["name"] in frozen:
            for param in group["params"]:
                param.grad = None


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every batch-norm layer of ``module`` in eval mode: running statistics stay fixed."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
