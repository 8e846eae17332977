"""What the classic baselines share: an embedding head and a pytorch-metric-learning loss.

The five classic rows of the published DyML table (triplet, N-pair, Multi-Similarity, CosFace,
Circle; REFERENCE.md section 5) are one method each, trained on the fine label only. Each module
in :mod:`methods` declares its config, its citation and which PML loss (and miner) it builds;
this module holds the rest:

- :class:`EmbeddingHead`: ``Linear(feature_dim, embedding_dim)``, optionally followed by
  ``BatchNorm1d`` or ``LayerNorm``; its output goes to the loss as it is (every PML distance the
  baselines use normalises it), and :meth:`PMLMethod.embed` L2-normalises it for evaluation;
- :class:`PMLMethod`: the training step, the loss on the fine label through
  :meth:`PMLMethod.metric_loss`, which takes ``embeddings`` ``[n, dim]`` and ``fine_labels``
  ``[n]`` of any ``n``, so that a batch gathered across DDP ranks can be passed as it is;
- :class:`ProxyPMLMethod`: the same for a classification loss whose class weights live in the
  loss (CosFace), with those weights in their own parameter group ``"proxies"``;
- the run-level part of the recipes, :func:`dyml_run`, and :func:`make_recipe`.

The run-level settings are the same for every baseline. The DyML paper's code
(github.com/SupetZYK/DynamicMetricLearning) ships only its model (a ResNet-34 from scratch, a
``Linear(512, 512)`` head, L2-normalised output) and no training configuration, and PML has no
optimiser defaults, so the optimisation follows the setup in which the HAPPIER code
(github.com/elias-ramzi/HAPPIER, ``config/optimizer/dyml*.yaml``, ``config/model/dyml*.yaml``)
reruns the DyML paper's CSL:

- Vehicle and Animal: ResNet-34 from scratch, 512-d embedding, batches of 64 fine classes x 4
  images, SGD with Nesterov momentum 0.9, lr 0.1, weight decay 1e-4, 100 epochs, cosine schedule
  per epoch down to 1e-6;
- Product: ResNet-34 from ImageNet, 512-d, 64 x 4, SGD Nesterov 0.9, lr 0.01 (heads x2, set by
  the method config's ``head_lr_mult``), weight decay 1e-4, 20 epochs, cosine per epoch down to
  1e-5, the backbone not stepped for the first 5 epochs and the schedule held meanwhile (the
  HAPPIER loop steps no epoch schedule during its warm-up, so the cosine ends near 2e-3),
  batch-norm frozen;
- toy: timm's ``test_resnet`` from scratch, 64-d embedding, 16 classes x 4 images, Adam lr 1e-3,
  weight decay 1e-4, 2 epochs, cosine: 30 steps an epoch on the default toy set (1920 images
  at 64 px), each under a second on 2 CPU cores.

Deviation from the DyML code: the backbone ends in global average pooling, as for every DyML
method here (REFERENCE.md section 4), where the DyML model uses max pooling.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from dymlbench.config import DATASETS, MethodConfig, bounded
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import Method, MethodNeeds, ParamGroup, Recipe, StepInput, StepOutput

DYML_CITATION = (
    "Baseline numbers on DyML: Y. Sun, Y. Zhu, Y. Zhang, P. Zheng, X. Qiu, C. Zhang and Y. Wei. "
    "Dynamic Metric Learning: Towards a Scalable Metric Space to Accommodate Multiple Semantic "
    "Scales. CVPR 2021."
)
"""Where the published numbers of the classic baselines come from."""

HeadNorm = Literal["none", "batchnorm", "layernorm"]

PRODUCT_HEAD_LR_MULT = 2.0
"""Learning-rate multiplier of the head on Product (the HAPPIER code's Product optimiser)."""

_DYML_SCRATCH_RUN: Mapping[str, Any] = {
    "model.backbone": "resnet34",
    "model.pretrained": "scratch",
    "model.embedding_dim": 512,
    "optim.optimizer": "sgd",
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 1e-4,
    "optim.epochs": 100,
    "optim.schedule": "cosine",
    "optim.schedule_unit": "epoch",
    "optim.min_lr": 1e-6,
    "optim.classes_per_batch": 64,
    "optim.images_per_class": 4,
}

_RUNS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "vehicle": MappingProxyType(_DYML_SCRATCH_RUN),
        "animal": MappingProxyType(_DYML_SCRATCH_RUN),
        "product": MappingProxyType(
            {
                **_DYML_SCRATCH_RUN,
                "model.pretrained": "imagenet",
                "optim.lr": 0.01,
                "optim.epochs": 20,
                "optim.min_lr": 1e-5,
                "optim.freeze_epochs": 5,
                "optim.freeze_groups": ("backbone",),
                "optim.schedule_during_freeze": "hold",
                "optim.freeze_batchnorm": True,
            }
        ),
        "toy": MappingProxyType(
            {
                "model.backbone": "test_resnet",
                "model.pretrained": "scratch",
                "model.embedding_dim": 64,
                "optim.optimizer": "adam",
                "optim.lr": 1e-3,
                "optim.weight_decay": 1e-4,
                "optim.epochs": 2,
                "optim.schedule": "cosine",
                "optim.classes_per_batch": 16,
                "optim.images_per_class": 4,
            }
        ),
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PMLConfig(MethodConfig):
    """Settings of the embedding head every classic baseline shares.

    Attributes:
        head_norm: normalisation after the head's linear layer: ``"none"`` (the DyML code),
            ``"batchnorm"`` or ``"layernorm"``.
        head_lr_mult: learning-rate multiplier of the head's parameter group ``"heads"``.
    """

    head_norm: HeadNorm = "none"
    head_lr_mult: float = bounded(1.0, gt=0.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProxyPMLConfig(PMLConfig):
    """:class:`PMLConfig` for a loss with class weights (one proxy per fine class).

    Attributes:
        proxy_lr_mult: learning-rate multiplier of the class weights' group ``"proxies"``.
    """

    proxy_lr_mult: float = bounded(1.0, gt=0.0)


C = TypeVar("C", bound=PMLConfig)


def dyml_run(dataset: str) -> Mapping[str, Any]:
    """The run-level keys of every classic baseline's recipe for ``dataset`` (module docstring).

    Example:
        >>> dyml_run("vehicle")["optim.lr"], dyml_run("product")["model.pretrained"]
        (0.1, 'imagenet')
    """
    _check_dataset(dataset)
    return _RUNS[dataset]


def per_dataset(config: C) -> Mapping[str, C]:
    """The same loss settings on every dataset, with the head x2 on Product.

    Args:
        config: the settings for Vehicle, Animal and toy.

    Returns:
        One config per name of :data:`dymlbench.config.DATASETS`.
    """
    product = dataclasses.replace(config, head_lr_mult=PRODUCT_HEAD_LR_MULT)
    return MappingProxyType(
        {dataset: product if dataset == "product" else config for dataset in DATASETS}
    )


def make_recipe(configs: Mapping[str, PMLConfig], dataset: str) -> Recipe:
    """The recipe of a classic baseline: its config for ``dataset`` plus :func:`dyml_run`."""
    _check_dataset(dataset)
    return Recipe(method=configs[dataset], run=dyml_run(dataset))


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"`dataset` must be one of {', '.join(DATASETS)}, but got {dataset!r}")


class EmbeddingHead(nn.Module):
    """``Linear(feature_dim, embedding_dim)``, then an optional batch- or layer-norm.

    Args:
        feature_dim: size of the backbone's pooled features.
        embedding_dim: size of the embedding.
        norm: ``"none"``, ``"batchnorm"`` or ``"layernorm"``.

    Example:
        >>> import torch
        >>> head = EmbeddingHead(feature_dim=8, embedding_dim=4, norm="layernorm")
        >>> head(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, *, feature_dim: int, embedding_dim: int, norm: HeadNorm = "none") -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, embedding_dim)
        if norm == "none":
            self.norm: nn.Module = nn.Identity()
        elif norm == "batchnorm":
            self.norm = nn.BatchNorm1d(embedding_dim)
        elif norm == "layernorm":
            self.norm = nn.LayerNorm(embedding_dim)
        else:
            raise ValueError(
                f"`norm` must be 'none', 'batchnorm' or 'layernorm', but got {norm!r}"
            )

    def forward(self, features: Tensor) -> Tensor:
        """Features ``[batch, feature_dim]`` to unnormalised ``[batch, embedding_dim]``."""
        return self.norm(self.fc(features))


class PMLMethod(Method):
    """A classic baseline: :class:`EmbeddingHead` plus a PML loss (and miner) on the fine label.

    Subclasses set ``citation`` and ``config_type`` (a :class:`PMLConfig`), implement
    :meth:`recipe` and :meth:`build_loss`, and override :meth:`build_miner` when the loss is
    fed mined tuples.

    Args:
        config: the method's config.
        feature_dim: size of the backbone's pooled features.
        embedding_dim: size of the embedding.
        hierarchy: the training split's hierarchy; only the number of fine classes is used.
    """

    def __init__(
        self,
        *,
        config: PMLConfig,
        feature_dim: int,
        embedding_dim: int,
        hierarchy: Hierarchy,
    ) -> None:
        super().__init__(
            config=config,
            feature_dim=feature_dim,
            embedding_dim=embedding_dim,
            hierarchy=hierarchy,
        )
        self.head = EmbeddingHead(
            feature_dim=feature_dim, embedding_dim=embedding_dim, norm=config.head_norm
        )
        self.loss = self.build_loss()
        self.miner = self.build_miner()

    @abc.abstractmethod
    def build_loss(self) -> nn.Module:
        """The PML loss, built from ``self.config`` (and ``self.n_classes``, ``embedding_dim``)."""

    def build_miner(self) -> nn.Module | None:
        """The PML miner whose tuples the loss gets; by default none (every pair of the batch)."""
        return None

    def metric_loss(self, embeddings: Tensor, fine_labels: Tensor) -> StepOutput:
        """The loss on a set of embeddings, mined first when the method has a miner.

        Args:
            embeddings: ``[n, embedding_dim]`` head outputs, not normalised; any ``n`` (a batch,
                or batches gathered across ranks).
            fine_labels: int64 ``[n]``, the fine class of each embedding.

        Returns:
            The loss and, with a miner, the number of mined tuples (``mined/triplets``, or
            ``mined/pos_pairs`` and ``mined/neg_pairs``).
        """
        if embeddings.ndim != 2 or fine_labels.shape != embeddings.shape[:1]:
            raise ValueError(
                "`embeddings` must be [n, dim] and `fine_labels` [n], but got shapes "
                f"{tuple(embeddings.shape)} and {tuple(fine_labels.shape)}"
            )
        if self.miner is None:
            return StepOutput(loss=self.loss(embeddings, fine_labels))

        tuples = self.miner(embeddings, fine_labels)
        if len(tuples) == 3:
            logs = {"mined/triplets": float(len(tuples[0]))}
        else:
            logs = {
                "mined/pos_pairs": float(len(tuples[0])),
                "mined/neg_pairs": float(len(tuples[2])),
            }
        return StepOutput(loss=self.loss(embeddings, fine_labels, tuples), logs=logs)

    needs = MethodNeeds(whole_batch=True)
    """Pairs and triplets span the global batch under DDP, as on one process."""

    def training_step(self, batch: StepInput) -> StepOutput:
        """The loss on the batch's fine labels (column 0)."""
        return self.metric_loss(self.head(batch.features), batch.labels[:, 0])

    def embed(self, features: Tensor) -> Tensor:
        """L2-normalised head outputs, ``[batch, embedding_dim]``."""
        return F.normalize(self.head(features), dim=1)

    def param_groups(self) -> list[ParamGroup]:
        """The head as ``"heads"`` with ``config.head_lr_mult``."""
        return [
            ParamGroup(
                name="heads", params=self.head.parameters(), lr_mult=self.config.head_lr_mult
            )
        ]


class ProxyPMLMethod(PMLMethod):
    """A :class:`PMLMethod` whose loss holds one class weight per fine class (CosFace).

    The loss's parameters form the group ``"proxies"`` with ``config.proxy_lr_mult``; the
    config is a :class:`ProxyPMLConfig`. A mean of per-sample terms, it needs no gathered batch.
    """

    needs = MethodNeeds()

    def param_groups(self) -> list[ParamGroup]:
        """``"heads"`` (``config.head_lr_mult``), ``"proxies"`` (``config.proxy_lr_mult``)."""
        proxies = ParamGroup(
            name="proxies", params=self.loss.parameters(), lr_mult=self.config.proxy_lr_mult
        )
        return [*super().param_groups(), proxies]
