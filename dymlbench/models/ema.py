"""An exponential-moving-average (EMA) teacher: a momentum copy of a whole network.

After every optimiser step each parameter of the teacher moves towards the student's:
``theta_t <- m * theta_t + (1 - m) * theta_s``, with ``m`` the momentum (0.9999 for MSA, Zhang,
Li and Zhang, ACM MM 2023), constant or ramped to 1 along a cosine (as in DINO, Caron et al.,
ICCV 2021).

Buffers. The exact form of the official MSA teacher is uncertain; dymlbench makes it an option
(:attr:`EMASpec.buffers`):

- ``"average"`` (default): floating-point buffers (batch-norm running means and variances) are
  averaged with the same momentum as the parameters, so the teacher's normalisation statistics
  describe the averaged weights rather than the current student;
- ``"copy"``: floating-point buffers are copied from the student at every update.

Integer buffers (``num_batches_tracked``) are always copied. The teacher never takes gradients,
and its own forward passes never change its batch-norm statistics.

Batch norm in the teacher's training-time passes (:attr:`EMASpec.batchnorm`): ``"running"``
(default) normalises with the teacher's running statistics, as in eval mode; ``"batch"``
normalises with the statistics of the batch, as a teacher left in train mode does (the official
MSA teacher). Evaluating the teacher always uses its running statistics.

Under DDP the teacher is not wrapped: every rank updates its own copy from the (synchronised)
student parameters; with ``"average"`` or ``"copy"`` the batch-norm buffers follow each rank's
local statistics unless the student uses synchronised batch norm.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn

from dymlbench.config import ConfigBase, bounded
from dymlbench.models.wrappers import unwrap_model


@dataclasses.dataclass(frozen=True, kw_only=True)
class EMASpec(ConfigBase):
    """How a method's EMA teacher is updated; a method declares one to get a teacher.

    Attributes:
        momentum: the momentum ``m`` at the first update, in [0, 1]; 1 keeps the teacher fixed.
        schedule: ``"constant"`` keeps ``m``; ``"cosine"`` ramps it to 1 along a half cosine over
            the run (``m_k = 1 - (1 - m) * (1 + cos(pi * k / total_steps)) / 2``).
        buffers: ``"average"`` or ``"copy"`` the student's floating-point buffers (see the
            module docstring).
        batchnorm: in the teacher's training-time passes, normalise with the ``"running"``
            statistics or with the ``"batch"``'s (see the module docstring).

    Example:
        >>> EMASpec(momentum=0.9999).schedule
        'constant'
    """

    momentum: float = bounded(0.9999, ge=0.0, le=1.0)
    schedule: Literal["constant", "cosine"] = "constant"
    buffers: Literal["average", "copy"] = "average"
    batchnorm: Literal["running", "batch"] = "running"


class EMATeacher:
    """A momentum copy of a network, updated from the student after each optimiser step.

    The copy is made at construction (from the unwrapped student, so a DDP- or
    ``torch.compile``-wrapped model works), has ``requires_grad`` off everywhere and stays in
    eval mode. Calling the teacher runs its network under ``torch.no_grad()``.

    Args:
        model: the student network (the whole network: backbone and the method's heads).
        spec: how to update; defaults to :class:`EMASpec` ``()``.
        total_steps: the number of updates of the run; needed by the cosine schedule.
        device: where to keep the teacher; defaults to the student's device.

    Example:
        >>> student = nn.Linear(3, 2)
        >>> teacher = EMATeacher(student, spec=EMASpec(momentum=0.5))
        >>> with torch.no_grad():
        ...     _ = student.weight.add_(1.0)
        >>> teacher.update(student)
        >>> torch.allclose(teacher.module.weight, student.weight - 0.5)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        spec: EMASpec | None = None,
        total_steps: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        spec = EMASpec() if spec is None else spec
        if spec.schedule == "cosine" and (total_steps is None or total_steps < 1):
            raise ValueError(
                "`total_steps` must be a positive integer for the cosine momentum schedule, "
                f"but got {total_steps!r}; pass the number of optimiser steps of the run"
            )
        self.spec = spec
        self.total_steps = total_steps
        self.num_updates = 0

        self.module = copy.deepcopy(unwrap_model(model))
        for param in self.module.parameters():
            param.requires_grad_(False)
            param.grad = None
        self.module.eval()
        if device is not None:
            self.module.to(device)

    @property
    def device(self) -> torch.device:
        """The device of the teacher's first parameter (or buffer)."""
        tensor = next(iter(self.module.state_dict().values()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def momentum(self) -> float:
        """The momentum the next :meth:`update` will use."""
        if self.spec.schedule == "constant":
            return self.spec.momentum
        progress = min(self.num_updates, self.total_steps) / self.total_steps
        return 1.0 - (1.0 - self.spec.momentum) * (1.0 + math.cos(math.pi * progress)) / 2.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the teacher towards ``model`` (the student) by one step.

        Args:
            model: the student, possibly DDP-wrapped; it must have the teacher's architecture.
        """
        student = unwrap_model(model)
        m = self.momentum()
        teacher_params = list(self.module.parameters())
        student_params = list(student.parameters())
        if len(teacher_params) != len(student_params):
            raise ValueError(
                f"`model` must have the teacher's architecture ({len(teacher_params)} "
                f"parameters), but got a model with {len(student_params)}"
            )
        for teacher_param, student_param in zip(teacher_params, student_params, strict=True):
            source = student_param.detach().to(teacher_param.device, teacher_param.dtype)
            teacher_param.mul_(m).add_(source, alpha=1.0 - m)

        for teacher_buffer, student_buffer in zip(
            self.module.buffers(), student.buffers(), strict=True
        ):
            source = student_buffer.detach().to(teacher_buffer.device, teacher_buffer.dtype)
            if self.spec.buffers == "average" and teacher_buffer.is_floating_point():
                teacher_buffer.mul_(m).add_(source, alpha=1.0 - m)
            else:
                teacher_buffer.copy_(source)
        self.num_updates += 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher network in eval mode without gradients."""
        self.module.eval()
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def training_pass(self, *, batch_statistics: bool) -> Iterator[nn.Module]:
        """The teacher network for a pass under training, without gradients.

        Args:
            batch_statistics: normalise its batch-norm layers with the batch's statistics
                (train mode, with a momentum of 0 so the running statistics stay as they are);
                otherwise with the running statistics (eval mode).

        Example:
            >>> teacher = EMATeacher(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
            >>> with teacher.training_pass(batch_statistics=True) as network:
            ...     out = network(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
            >>> out.mean(0).abs().max().item() < 1e-6, teacher.module[1].running_mean.tolist()
            (True, [0.0, 0.0])
        """
        layers = [
            module
            for module in self.module.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]
        momenta = [layer.momentum for layer in layers]
        try:
            if batch_statistics:
                for layer in layers:
                    layer.train()
                    layer.momentum = 0.0
            with torch.no_grad():
                yield self.module
        finally:
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum
            self.module.eval()

    def to(self, device: torch.device | str) -> EMATeacher:
        """Move the teacher to ``device``; returns ``self``."""
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights and update count, for a resumable checkpoint."""
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (strictly: every key must match).

        Args:
            state: ``{"module": state dict, "num_updates": int}``.
        """
        missing = {"module", "num_updates"} - set(state)
        if missing:
            raise ValueError(
                "`state` must have the keys 'module' and 'num_updates' (from "
                f"EMATeacher.state_dict), but it lacks {sorted(missing)}"
            )
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
