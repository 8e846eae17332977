"""The method interface: what a DyML method provides and how the engine uses it.

A method is a subclass of :class:`Method` registered under a key with
:func:`dymlbench.registry.register_method`. The class is the whole description; the engine never
branches on a method's name, everything it needs to know is declared here as data or hooks.

What a method declares:

- ``config_type``: its frozen config dataclass (a :class:`dymlbench.config.MethodConfig`), the
  ``method`` section of the run configuration;
- :meth:`Method.recipe`: the paper's hyperparameters for a dataset, as a :class:`Recipe` holding
  the method's config and the run-level settings it changes (optimiser, learning rate, epochs,
  embedding size, initialisation...);
- ``citation``: the paper the method comes from;
- the constructor, which is the builder: it takes the config, the backbone's feature size, the
  embedding size and the training :class:`dymlbench.hierarchy.Hierarchy` (label table, classes
  per level, parents), and creates the heads and loss parameters;
- :meth:`Method.training_step`: a :class:`StepInput` in, a :class:`StepOutput` out, the same
  type for every method;
- :meth:`Method.embed`: the eval-time embedding;
- :meth:`Method.param_groups`: its parameters in named groups with learning-rate multipliers;
- :attr:`Method.needs`: what it needs from the engine (:class:`MethodNeeds`: an EMA teacher);
  :meth:`Method.teacher_output` says what the teacher's copy of the method computes;
- optional hooks :meth:`Method.after_step` and :meth:`Method.after_epoch`.

One run, from the engine's side (``network`` is a :class:`Network`, the backbone plus the
method):

1. ``method_type = get_method(config.method_name)``; build the backbone, then
   ``method_type(config=config.method, feature_dim=..., embedding_dim=config.model.embedding_dim,
   hierarchy=...)`` with the training split's hierarchy;
2. optimiser groups: ``"backbone"`` (multiplier 1) plus :func:`checked_param_groups`; the
   groups named in ``optim.freeze_groups`` are not stepped for ``optim.freeze_epochs`` epochs;
3. if ``method.needs.teacher`` is set: ``EMATeacher(network, spec=method.needs.teacher)``;
4. every step: ``teacher_output = teacher.module.teacher_output(images)`` (no gradients) when
   there is a teacher; ``output = network(images, labels, progress=...,
   teacher_output=...)``; ``output.loss.backward()``; optimiser step; ``teacher.update(network)``;
   ``method.after_step(progress)``;
5. after every epoch: ``method.after_epoch(progress)``, then evaluation with
   ``network.embed(images)``.

Vocabulary: ``features`` ``[batch, feature_dim]`` are the backbone's pooled output,
``embeddings`` ``[batch, dim]`` what the evaluator ranks, ``labels`` ``[n, n_levels]`` with
column 0 the finest level (:data:`dymlbench.hierarchy.LEVEL_NAMES`).
"""

from __future__ import annotations

import abc
import dataclasses
import types
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dymlbench.config import MethodConfig
from dymlbench.hierarchy import Hierarchy
from dymlbench.models.ema import EMASpec

BACKBONE_GROUP = "backbone"
"""Name of the parameter group of the backbone, which the engine creates (multiplier 1)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """A method's settings for one dataset: its own config and the run-level keys it sets.

    Attributes:
        method: the method's config, an instance of its ``config_type``.
        run: dotted run-configuration keys to values, applied over the defaults before the
            user's overrides, e.g. ``{"optim.optimizer": "sgd", "optim.lr": 0.01,
            "model.embedding_dim": 513}``. ``method.*`` and ``data.dataset`` cannot appear here.

    Example:
        >>> Recipe(method=MethodConfig(), run={"optim.lr": 0.1}).run["optim.lr"]
        0.1
    """

    method: MethodConfig
    run: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, MethodConfig):
            raise TypeError(
                f"`method` must be a MethodConfig, but got {type(self.method).__name__}"
            )
        if not isinstance(self.run, Mapping):
            raise TypeError(f"`run` must be a mapping of dotted keys, but got {self.run!r}")
        bad = [key for key in self.run if key == "method" or str(key).startswith("method.")]
        if bad:
            raise ValueError(
                f"`run` must not set the method section (put it in `method`), but got {bad}"
            )
        object.__setattr__(self, "run", types.MappingProxyType(dict(self.run)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Progress:
    """Where the run is, as given to :meth:`Method.training_step` and the hooks.

    Attributes:
        epoch: the current epoch, from 0.
        step: the index of the current optimiser step over the whole run, from 0 (the steps
            done before it).
        n_epochs: epochs of the run.
        steps_per_epoch: optimiser steps per epoch.

    Example:
        >>> Progress(epoch=1, step=15, n_epochs=2, steps_per_epoch=10).fraction
        0.75
    """

    epoch: int
    step: int
    n_epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return self.n_epochs * self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Share of the run done, in [0, 1]."""
        return min(self.step / max(self.total_steps, 1), 1.0)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class StepInput:
    """One training batch as the method sees it.

    Attributes:
        features: the backbone's pooled features, float32 ``[batch, feature_dim]`` (the engine
            casts them out of autocast: losses run in float32).
        labels: int64 ``[batch, n_levels]``, column 0 the finest level.
        progress: where the run is.
        teacher_output: what the EMA teacher's copy of the method returned from
            :meth:`Method.teacher_output` on the same images, detached; ``None`` when the method
            declares no teacher.
    """

    features: Tensor
    labels: Tensor
    progress: Progress
    teacher_output: Tensor | None = None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class StepOutput:
    """What every method's training step returns.

    Attributes:
        loss: the scalar to back-propagate (0-d tensor).
        logs: values to log under the method's names, e.g. ``{"loss/cluster": ...}``: floats or
            detached 0-d tensors (the engine converts them when it logs, so a step does not have
            to synchronise with the GPU).

    Example:
        >>> StepOutput(loss=torch.tensor(2.0), logs={"loss/a": torch.tensor(0.5)}).scalar_logs()
        {'loss': 2.0, 'loss/a': 0.5}
    """

    loss: Tensor
    logs: Mapping[str, float | Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.loss, Tensor) or self.loss.ndim != 0:
            shape = tuple(self.loss.shape) if isinstance(self.loss, Tensor) else type(self.loss)
            raise ValueError(f"`loss` must be a 0-d tensor, but got {shape}")

    def scalar_logs(self) -> dict[str, float]:
        """The loss (as ``"loss"``) and the logs as Python floats."""
        values = {"loss": self.loss.detach(), **self.logs}
        return {key: float(value) for key, value in values.items()}


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ParamGroup:
    """A named group of a method's parameters for the optimiser.

    Attributes:
        name: unique among the method's groups; ``"backbone"`` is the engine's.
        params: the parameters.
        lr_mult: the group's learning rate is ``optim.lr * lr_mult`` (MSA on Product: heads and
            proxies x4).
        weight_decay: the group's weight decay; ``None`` takes ``optim.weight_decay``.
    """

    name: str
    params: tuple[nn.Parameter, ...]
    lr_mult: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        if not self.name or self.name == BACKBONE_GROUP:
            raise ValueError(
                f"`name` must be a non-empty name other than {BACKBONE_GROUP!r}, "
                f"but got {self.name!r}"
            )
        if not self.lr_mult > 0:
            raise ValueError(
                f"`lr_mult` of group {self.name!r} must be > 0, but got {self.lr_mult}"
            )
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(
                f"`weight_decay` of group {self.name!r} must be >= 0 or None, "
                f"but got {self.weight_decay}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodNeeds:
    """What a method needs from the engine beyond the plain loop, declared as data.

    Attributes:
        teacher: keep an EMA teacher of the whole network with this spec, and pass the
            teacher's :meth:`Method.teacher_output` to every training step; ``None`` for no
            teacher.
        whole_batch: under DDP, give :meth:`Method.training_step` the features, labels and
            teacher outputs gathered from every rank (differentiably), so that a loss over pairs,
            triplets or rankings of the batch sees the global batch as one process would. A loss
            that is a mean of per-sample terms (a proxy loss) does not need it.
    """

    teacher: EMASpec | None = None
    whole_batch: bool = False


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Base class of a DyML method: its heads, loss parameters, loss and embedding.

    Subclasses set the class attributes ``citation`` and ``config_type``, implement
    :meth:`recipe`, :meth:`training_step` and :meth:`embed`, and create their modules in
    ``__init__`` (which keeps this signature and calls ``super().__init__(...)`` first).

    Args:
        config: the method's config, an instance of ``config_type``.
        feature_dim: size of the backbone's pooled features.
        embedding_dim: size of the embedding the heads produce (``model.embedding_dim``).
        hierarchy: the training split's hierarchy: ``labels`` ``[n, n_levels]`` with contiguous
            ids, ``n_classes`` per level, ``parents`` and ``ancestors(level)`` for methods whose
            proxies carry coarser labels. Kept as :attr:`n_classes`, not stored whole.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True, kw_only=True)
        ... class LinearConfig(MethodConfig):
        ...     scale: float = 1.0
        >>> class Linear(Method):
        ...     citation = "A. Author. A paper. 2024."
        ...     config_type = LinearConfig
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.fc = nn.Linear(self.feature_dim, self.embedding_dim)
        ...     @classmethod
        ...     def recipe(cls, dataset):
        ...         return Recipe(method=LinearConfig(), run={"optim.lr": 0.1})
        ...     def training_step(self, batch):
        ...         loss = self.fc(batch.features).square().mean() * self.config.scale
        ...         return StepOutput(loss=loss)
        ...     def embed(self, features):
        ...         return self.fc(features)
        >>> import numpy as np
        >>> hierarchy = Hierarchy.from_labels(np.array([[0, 0], [1, 0], [2, 1]]))
        >>> method = Linear(
        ...     config=LinearConfig(), feature_dim=8, embedding_dim=4, hierarchy=hierarchy
        ... )
        >>> [group.name for group in checked_param_groups(method)]
        ['heads']
        >>> method.embed(torch.zeros(5, 8)).shape
        torch.Size([5, 4])
    """

    citation: ClassVar[str]
    """The paper the method comes from (authors, title, venue, year)."""

    config_type: ClassVar[type[MethodConfig]]
    """The method's frozen config dataclass."""

    def __init__(
        self,
        *,
        config: MethodConfig,
        feature_dim: int,
        embedding_dim: int,
        hierarchy: Hierarchy,
    ) -> None:
        super().__init__()
        if type(config) is not self.config_type:
            raise TypeError(
                f"`config` must be a {self.config_type.__name__}, but got {type(config).__name__}"
            )
        for name, value in (("feature_dim", feature_dim), ("embedding_dim", embedding_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, but got {value!r}")
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(
                "`hierarchy` must be a Hierarchy (Hierarchy.from_labels(labels)), "
                f"but got {type(hierarchy).__name__}"
            )
        self.config = config
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.n_classes: tuple[int, ...] = hierarchy.n_classes

    @property
    def n_levels(self) -> int:
        """Number of hierarchy levels in the training labels."""
        return len(self.n_classes)

    @classmethod
    @abc.abstractmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The paper's hyperparameters for ``dataset``.

        Args:
            dataset: one of :data:`dymlbench.config.DATASETS` (``"toy"`` must train in minutes
                on a CPU: a small backbone from scratch, few epochs).

        Returns:
            The method's config and the run-level keys it sets for that dataset.
        """

    @abc.abstractmethod
    def training_step(self, batch: StepInput) -> StepOutput:
        """The loss on one batch.

        Args:
            batch: the backbone's features, the labels, the progress and the teacher's output.

        Returns:
            The loss to back-propagate and the values to log.
        """

    @abc.abstractmethod
    def embed(self, features: Tensor) -> Tensor:
        """The eval-time embedding of backbone features.

        Args:
            features: ``[batch, feature_dim]``.

        Returns:
            ``[batch, dim]`` embeddings, ranked by cosine similarity by the evaluator.
        """

    @property
    def needs(self) -> MethodNeeds:
        """What the method needs from the engine; by default nothing (no teacher)."""
        return MethodNeeds()

    def teacher_output(self, features: Tensor) -> Tensor:
        """What the EMA teacher's copy of the method passes to the student's training step.

        Called on the teacher's copy, without gradients, with the teacher backbone's features
        of the batch. The default is the embedding; MSA returns its normalised ``fc_aux``.

        Args:
            features: ``[batch, feature_dim]`` from the teacher's backbone.

        Returns:
            The tensor given as :attr:`StepInput.teacher_output`.
        """
        return self.embed(features)

    def param_groups(self) -> list[ParamGroup]:
        """The method's trainable parameters in named groups with learning-rate multipliers.

        The default is one group ``"heads"`` with every trainable parameter, multiplier 1.
        Override to give proxies or heads their own multiplier or weight decay; every trainable
        parameter must be in exactly one group (:func:`checked_param_groups` checks it).
        """
        params = tuple(param for param in self.parameters() if param.requires_grad)
        return [ParamGroup(name="heads", params=params)] if params else []

    def after_step(self, progress: Progress) -> None:
        """Hook run after each optimiser step and EMA update; by default nothing.

        Args:
            progress: the one the step's :meth:`training_step` got (``progress.step`` is the
                index of the step just taken).
        """

    def after_epoch(self, progress: Progress) -> None:
        """Hook run after each training epoch, before that epoch's evaluation; by default nothing.

        Args:
            progress: where the run is; ``progress.epoch`` is the epoch just finished.
        """


def heads_and_proxies(
    *, heads: nn.Module, proxies: nn.Module, head_lr_mult: float, proxy_lr_mult: float
) -> list[ParamGroup]:
    """The two groups of a proxy-based method: ``"heads"`` and ``"proxies"``.

    Example:
        >>> groups = heads_and_proxies(
        ...     heads=nn.Linear(4, 2), proxies=nn.Linear(2, 3), head_lr_mult=1.0, proxy_lr_mult=4.0
        ... )
        >>> [(group.name, len(group.params), group.lr_mult) for group in groups]
        [('heads', 2, 1.0), ('proxies', 2, 4.0)]
    """
    return [
        ParamGroup(name="heads", params=heads.parameters(), lr_mult=head_lr_mult),
        ParamGroup(name="proxies", params=proxies.parameters(), lr_mult=proxy_lr_mult),
    ]


def checked_param_groups(method: Method) -> list[ParamGroup]:
    """``method.param_groups()``, checked: unique names, each trainable parameter exactly once.

    Args:
        method: a built method.

    Returns:
        The groups, in the method's order.

    Raises:
        ValueError: a repeated group name, a parameter in two groups, a trainable parameter in
            no group, or a parameter that is not the method's.
    """
    groups = method.param_groups()
    names = [group.name for group in groups]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"parameter group names must be unique, but {repeated} repeat")

    owner: dict[int, str] = {}
    for group in groups:
        for param in group.params:
            if id(param) in owner:
                raise ValueError(
                    f"a parameter must be in one group, but one is in both "
                    f"{owner[id(param)]!r} and {group.name!r}"
                )
            owner[id(param)] = group.name
    own = {id(param) for param in method.parameters()}
    holding_others = sorted({name for pid, name in owner.items() if pid not in own})
    if holding_others:
        raise ValueError(
            "parameter groups must hold only the method's own parameters, but groups "
            f"{holding_others} hold others"
        )
    left_out = [
        name
        for name, param in method.named_parameters()
        if param.requires_grad and id(param) not in owner
    ]
    if left_out:
        raise ValueError(
            f"every trainable parameter must be in a group, but {_list(left_out)} are in none"
        )
    return groups


class Network(nn.Module):
    """The backbone plus the method: what the engine trains, wraps in DDP and copies as a teacher.

    The training step runs through :meth:`forward`, so that a ``DistributedDataParallel``
    wrapper sees it. The backbone runs under autocast when ``autocast_dtype`` is set (bf16 on
    CUDA for ``optim.amp="bf16"``); its features are cast to float32 before the method's heads
    and loss.

    Args:
        backbone: images ``[batch, 3, H, W]`` to features ``[batch, feature_dim]``.
        method: the built method.
        autocast_dtype: the autocast dtype of the backbone's forward pass, or ``None``.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        method: Method,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.autocast_dtype = autocast_dtype

    def features(self, images: Tensor) -> Tensor:
        """The backbone's pooled features, float32 ``[batch, feature_dim]``."""
        with torch.autocast(
            images.device.type,
            dtype=self.autocast_dtype,
            enabled=self.autocast_dtype is not None,
        ):
            features = self.backbone(images)
        return features.float()

    def forward(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        progress: Progress,
        teacher_output: Tensor | None = None,
    ) -> StepOutput:
        """One training step: features, then the method's loss.

        Args:
            images: ``[batch, 3, H, W]``.
            labels: int64 ``[batch, n_levels]``.
            progress: where the run is.
            teacher_output: the teacher's :meth:`teacher_output` on the same images, or ``None``.

        Returns:
            The method's :class:`StepOutput`.
        """
        features = self.features(images)
        if self.method.needs.whole_batch:
            from dymlbench.engine.distributed import gather_across_ranks

            features, labels = gather_across_ranks(features), gather_across_ranks(labels)
            if teacher_output is not None:
                teacher_output = gather_across_ranks(teacher_output)
        batch = StepInput(
            features=features, labels=labels, progress=progress, teacher_output=teacher_output
        )
        return self.method.training_step(batch)

    def embed(self, images: Tensor) -> Tensor:
        """The eval-time embeddings ``[batch, dim]`` of ``images``."""
        return self.method.embed(self.features(images))

    def teacher_output(self, images: Tensor) -> Tensor:
        """Called on the EMA teacher's copy: the method's :meth:`Method.teacher_output`."""
        return self.method.teacher_output(self.features(images))


def _list(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(names[:8]) + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")
