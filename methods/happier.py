"""HAPPIER: hierarchical average precision training, its H-AP surrogate, cluster loss and method.

Ramzi, Audebert, Thome, Rambour and Bitot, "Hierarchical Average Precision Training for
Pertinent Image Retrieval", ECCV 2022 (official code: github.com/elias-ramzi/HAPPIER). The losses
reproduce the official ``HAPLoss`` (batch-vs-batch path) and ``ClusterLoss`` number for number in
float32, gradients included (see :func:`hap_surrogate` for what the gradient is).

Vocabulary: ``embeddings`` is ``[n, dim]`` (L2-normalised by the network; the losses do not
normalise them again); ``labels`` is ``[n, n_levels]`` with column 0 the finest level; the
*match* of two items is the number of label columns on which they agree; a *recipe* is a method's
per-dataset hyperparameters. The losses expect float32 inputs and are meant to run outside
autocast.

The registered method ``happier`` (:class:`HAPPIER`):

- head (:class:`HAPPIERHead`, the official ``RetrievalNet`` with ``norm_features: True``): the
  pooled feature standardised by a LayerNorm without affine, then ``Linear(feature_dim,
  embedding_dim)``, then L2-normalised, in training as in evaluation (``normalize`` defaults to
  true); the loss and the evaluator get the same embedding;
- loss: :class:`HAPPIERLoss`, ``hap_weight * (1 - H-AP surrogate) + cluster_weight *`` the
  fine-level normalised-softmax loss;
- parameter groups: ``"heads"`` (the linear layer) and ``"proxies"`` (the cluster loss's), with
  their multipliers (the official cluster loss takes the settings of the optimiser its config
  names).

Recipes (official ``config/{loss,optimizer,model}`` and the README's DyML commands; REFERENCE.md
section 4), every one with a ResNet-34, a 512-d embedding, batches of 64 fine classes x 4 images
and the cosine schedule stepped once per epoch:

- Vehicle: weights 0.9 / 0.1 (``HAPPIER.yaml``); Animal: 0.5 / 0.5 (``HAPPIER_5.yaml``); both
  from scratch (``dyml_resnet34.yaml``: ``pretrained: False``), one SGD over the whole network
  and the proxies (``dyml.yaml``): Nesterov momentum 0.9, lr 0.1 (heads and proxies x1), weight
  decay 1e-4, 100 epochs, cosine to 1e-6;
- Product: weights 0.9 / 0.1 (``HAPPIER_product.yaml``); torchvision's ImageNet weights
  (timm's ``resnet34.tv_in1k``, as the official ``torchvision.models.resnet34(pretrained=True)``)
  and batch-norm frozen (``dyml_resnet34_product.yaml``); SGD Nesterov 0.9, backbone lr 0.01,
  heads and proxies 0.02 (x2, ``dyml_product.yaml``; the proxies take the head's optimiser),
  weight decay 1e-4, 20 epochs, cosine to 1e-5, the backbone not stepped for the first 5 epochs
  (``warmup_step=5``) and the schedule held meanwhile (``optim.schedule_during_freeze=hold``:
  the official loop steps no epoch schedule during the warm-up, so the cosine starts after
  epoch 5 and ends near 2e-3 rather than 1e-5);
- toy: weights 0.9 / 0.1 and the toy run of the classic baselines (:mod:`methods._pml`:
  ``test_resnet`` from scratch, 64-d, 16 classes x 4 images, Adam lr 1e-3, 2 epochs).

The run-level keys (:func:`happier_run`) are those of :func:`methods._pml.dyml_run`, which
follows the same HAPPIER configs, with the torchvision weights named on Product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymlbench.config import DATASETS, MethodConfig, bounded
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import (
    Method,
    MethodNeeds,
    ParamGroup,
    Recipe,
    StepInput,
    StepOutput,
    heads_and_proxies,
)
from dymlbench.registry import register_method
from methods._pml import dyml_run

# TODO: measure on CUDA, where fewer, larger blocks would save kernel launches; only CPU was.
_CHUNK_ELEMENTS = 2**18
"""Largest ``[pairs, n]`` block the rank computation holds at once (1 MiB in float32; small
blocks stay in cache, which on CPU is faster than larger ones)."""


@dataclass(frozen=True)
class RankApproximation:
    """Shape of the smooth step HAPPIER's rank uses for items less relevant than the positive.

    For a score difference ``d = s_k - s_j`` it is ``sigmoid(d / tau)`` for ``d <= 0``,
    ``start + sigmoid(d / tau)`` for ``0 < d <= delta`` and ``rho * (d - delta) + offset`` beyond,
    with the sigmoid's exponent clamped to ``[-50, 50]``. Defaults are the paper's.
    """

    tau: float = 0.01
    rho: float = 100.0
    offset: float = 1.44
    delta: float = 0.05
    start: float = 0.5

    def __post_init__(self) -> None:
        for name in ("tau", "delta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, but got {getattr(self, name)}")


@dataclass(frozen=True)
class HAPPIERLossConfig:
    """Hyperparameters of the HAPPIER loss for one dataset (a recipe).

    Attributes:
        hap_weight: weight of ``1 - H-AP`` surrogate.
        cluster_weight: weight of the fine-level normalised-softmax cluster loss.
        rank: the smooth rank's shape.
        relevance_alpha: exponent of the "pop" relevance weights.
        temperature: temperature of the cluster loss.
    """

    hap_weight: float
    cluster_weight: float
    rank: RankApproximation = RankApproximation()
    relevance_alpha: float = 1.0
    temperature: float = 0.05

    def __post_init__(self) -> None:
        for name in ("hap_weight", "cluster_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be non-negative, but got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be positive, but got {self.temperature}")


HAPPIER_LOSS_RECIPES: Mapping[str, HAPPIERLossConfig] = MappingProxyType(
    {
        "vehicle": HAPPIERLossConfig(hap_weight=0.9, cluster_weight=0.1),
        "animal": HAPPIERLossConfig(hap_weight=0.5, cluster_weight=0.5),
        "product": HAPPIERLossConfig(hap_weight=0.9, cluster_weight=0.1),
        "toy": HAPPIERLossConfig(hap_weight=0.9, cluster_weight=0.1),
    }
)
"""The paper's loss weights per dataset (official configs), plus the toy data's."""


def match_matrix(labels: Tensor) -> Tensor:
    """Number of label columns on which each pair of items agrees.

    Args:
        labels: ``[n, n_levels]``.

    Returns:
        ``[n, n]`` int64 match values in ``0..n_levels``; the diagonal is ``n_levels``.

    Example:
        >>> match_matrix(torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0]]))
        tensor([[3, 2, 1],
                [2, 3, 1],
                [1, 1, 3]])
    """
    return (labels.unsqueeze(1) == labels.unsqueeze(0)).sum(dim=2)


def pop_relevance(match: Tensor, *, n_levels: int, alpha: float = 1.0) -> Tensor:
    """HAPPIER's "pop" relevance of every item for every query of a batch.

    For query ``i`` and an item ``j`` with match value ``v``, the relevance is
    ``w_v / n_v`` with ``w_v = (v / (n_levels - 1))^alpha`` (0, 0.5, 1, 1.5 for three levels and
    ``alpha = 1``) and ``n_v`` the number of batch items, the query itself included, whose match
    with ``i`` is ``v``.

    Args:
        match: ``[n, n]`` match values from :func:`match_matrix`.
        n_levels: number of label columns (at least 2).
        alpha: exponent of the weights.

    Returns:
        ``[n, n]`` float32 relevances.

    Example:
        >>> pop_relevance(torch.tensor([[3, 3, 1], [3, 3, 1], [1, 1, 3]]), n_levels=3)
        tensor([[0.7500, 0.7500, 0.5000],
                [0.7500, 0.7500, 0.5000],
                [0.2500, 0.2500, 1.5000]])
    """
    if n_levels < 2:
        raise ValueError(f"`n_levels` must be at least 2, but got {n_levels}")
    weights = torch.tensor(
        [(value / (n_levels - 1)) ** alpha for value in range(n_levels + 1)], device=match.device
    )
    counts = F.one_hot(match, n_levels + 1).sum(dim=1).to(weights.dtype)
    return weights[match] / counts.gather(1, match)


def hap_surrogate(
    embeddings: Tensor, labels: Tensor, *, rank: RankApproximation, relevance_alpha: float = 1.0
) -> Tensor:
    """Smooth H-AP of every query of a batch against the whole batch, itself included.

    With ``S = E E^T`` and, for query ``i`` and items ``j, k``, ``d = S[i, k] - S[i, j]``:
    ``rank[i, j] = 1 + sum_{k != j} step(d)``, where ``step`` is ``rank``'s smooth step when
    ``k`` matches ``i`` on fewer levels than ``j`` does and the hard step ``[d >= 0]`` otherwise;
    ``hrank[i, j] = rel[i, j] + sum_{k != j} [d >= 0] min(rel[i, j], rel[i, k])`` with the
    :func:`pop_relevance`; ``H-AP_i = sum_j (hrank / rank) / sum_j rel[i, j]``.

    Gradient: the official code cannot be back-propagated on PyTorch >= 1.9 (``heaviside`` has
    no derivative there); on the torch 1.8 it pins, the hard steps pass no gradient. This does the
    same: the gradient flows only through the sigmoid and linear pieces of the rank, never
    through the h-rank, which is the true derivative almost everywhere. The ``n^3`` differences
    are computed in blocks, only for the pairs of a query and an item of positive relevance, and
    autograd keeps only ``[n, n]`` tensors.

    Args:
        embeddings: ``[n, dim]``, L2-normalised by the caller.
        labels: ``[n, n_levels]``, column 0 the finest level.
        rank: the smooth step's shape.
        relevance_alpha: exponent of the "pop" relevance weights.

    Returns:
        ``[n]`` H-AP surrogate values in ``(0, 1]``.

    Example:
        A well-ordered batch scores 1 (ties between equally relevant items do not hurt):

        >>> labels = torch.tensor([[0, 0], [0, 0], [1, 0], [2, 1]])
        >>> embeddings = torch.tensor(
        ...     [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]
        ... )
        >>> hap_surrogate(embeddings, labels, rank=RankApproximation())
        tensor([1., 1., 1., 1.])
    """
    match = match_matrix(labels)
    relevances = pop_relevance(match, n_levels=labels.shape[1], alpha=relevance_alpha).to(
        embeddings.dtype
    )
    return _SmoothHAP.apply(embeddings @ embeddings.T, match, relevances, rank)


class HAPLoss(nn.Module):
    """``1 - H-AP`` surrogate loss averaged over the batch's queries (official ``HAPLoss``).

    Args:
        rank: the smooth step's shape.
        relevance_alpha: exponent of the "pop" relevance weights.
    """

    def __init__(
        self, *, rank: RankApproximation | None = None, relevance_alpha: float = 1.0
    ) -> None:
        super().__init__()
        self.rank = rank or RankApproximation()
        self.relevance_alpha = relevance_alpha

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            embeddings: ``[n, dim]``, L2-normalised.
            labels: ``[n, n_levels]``, column 0 the finest level.

        Returns:
            ``mean_i (1 - H-AP_i)``, a scalar.
        """
        hap = hap_surrogate(
            embeddings, labels, rank=self.rank, relevance_alpha=self.relevance_alpha
        )
        return (1 - hap).mean()


class NormSoftmaxLoss(nn.Module):
    """Normalised-softmax proxy cross-entropy, one proxy per class (HAPPIER's cluster loss).

    Zhai and Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019, as
    the HAPPIER code uses it: ``cross_entropy(E normalise(W)^T / temperature, labels)``. The
    embeddings are not normalised here; proxies start uniform in ``+-1 / sqrt(dim)``.

    Args:
        n_classes: number of classes.
        embedding_dim: embedding size.
        temperature: logit temperature.
    """

    def __init__(self, *, n_classes: int, embedding_dim: int, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature
        bound = 1.0 / math.sqrt(embedding_dim)
        self.proxies = nn.Parameter(torch.empty(n_classes, embedding_dim).uniform_(-bound, bound))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            embeddings: ``[n, embedding_dim]``.
            labels: class ids, ``[n]``.

        Returns:
            The batch-mean cross-entropy, a scalar.
        """
        logits = embeddings @ F.normalize(self.proxies, dim=1).T
        return F.cross_entropy(logits / self.temperature, labels)


class HAPPIERLoss(nn.Module):
    """The HAPPIER training loss: ``hap_weight * HAPLoss + cluster_weight * NormSoftmaxLoss``.

    The cluster loss uses the fine labels, one proxy per fine class.

    Args:
        n_classes: number of fine training classes.
        embedding_dim: embedding size.
        config: the loss recipe, e.g. ``HAPPIER_LOSS_RECIPES["vehicle"]``.

    Example:
        >>> loss = HAPPIERLoss(n_classes=3, embedding_dim=4, config=HAPPIER_LOSS_RECIPES["animal"])
        >>> embeddings = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
        >>> labels = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [2, 1], [2, 1]])
        >>> total, parts = loss(embeddings, labels)
        >>> sorted(parts)
        ['loss_cluster', 'loss_hap']
    """

    def __init__(self, *, n_classes: int, embedding_dim: int, config: HAPPIERLossConfig) -> None:
        super().__init__()
        self.hap_weight = config.hap_weight
        self.cluster_weight = config.cluster_weight
        self.hap_loss = HAPLoss(rank=config.rank, relevance_alpha=config.relevance_alpha)
        self.cluster_loss = NormSoftmaxLoss(
            n_classes=n_classes, embedding_dim=embedding_dim, temperature=config.temperature
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            embeddings: ``[n, embedding_dim]``, L2-normalised.
            labels: ``[n, n_levels]``, column 0 the finest level.

        Returns:
            The weighted total and its detached, unweighted components ``loss_hap`` and
            ``loss_cluster`` (the official code logs them unweighted too).
        """
        if labels.ndim != 2:
            raise ValueError(
                f"`labels` must be [n, n_levels], but got shape {tuple(labels.shape)}"
            )
        hap = self.hap_loss(embeddings, labels)
        cluster = self.cluster_loss(embeddings, labels[:, 0])
        total = self.hap_weight * hap + self.cluster_weight * cluster
        return total, {"loss_hap": hap.detach(), "loss_cluster": cluster.detach()}


class HAPPIERHead(nn.Module):
    """The official HAPPIER head: LayerNorm without affine, a linear layer, L2 normalisation.

    Args:
        feature_dim: size of the pooled backbone feature (512 for ResNet-34).
        embedding_dim: size of the embedding.

    Example:
        >>> head = HAPPIERHead(feature_dim=8, embedding_dim=4)
        >>> head(torch.randn(3, 8)).norm(dim=1).round(decimals=4).tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, *, feature_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim, elementwise_affine=False)
        self.fc = nn.Linear(feature_dim, embedding_dim)

    def forward(self, features: Tensor) -> Tensor:
        """Features ``[n, feature_dim]`` to L2-normalised embeddings ``[n, embedding_dim]``."""
        return F.normalize(self.fc(self.norm(features)), dim=1)


@dataclass(frozen=True, kw_only=True)
class HAPPIERConfig(MethodConfig):
    """The ``method`` section of a HAPPIER run; the defaults are the Vehicle recipe.

    Attributes:
        hap_weight: weight of ``1 - H-AP`` surrogate.
        cluster_weight: weight of the fine-level cluster loss.
        tau: temperature of the rank's sigmoid.
        rho: slope of the rank's linear piece beyond ``delta``.
        offset: value of the linear piece at ``delta``.
        delta: score difference where the linear piece starts.
        start: offset of the sigmoid for positive differences below ``delta``.
        relevance_alpha: exponent of the "pop" relevance weights.
        temperature: temperature of the cluster loss.
        head_lr_mult: learning-rate multiplier of the group ``"heads"``.
        proxy_lr_mult: learning-rate multiplier of the group ``"proxies"``.
    """

    hap_weight: float = bounded(0.9, ge=0.0)
    cluster_weight: float = bounded(0.1, ge=0.0)
    tau: float = bounded(0.01, gt=0.0)
    rho: float = 100.0
    offset: float = 1.44
    delta: float = bounded(0.05, gt=0.0)
    start: float = 0.5
    relevance_alpha: float = 1.0
    temperature: float = bounded(0.05, gt=0.0)
    head_lr_mult: float = bounded(1.0, gt=0.0)
    proxy_lr_mult: float = bounded(1.0, gt=0.0)

    @classmethod
    def from_loss_config(cls, loss: HAPPIERLossConfig, **changes: Any) -> HAPPIERConfig:
        """The method config holding the loss recipe ``loss``, with other keys in ``changes``."""
        rank = loss.rank
        return cls(
            hap_weight=loss.hap_weight,
            cluster_weight=loss.cluster_weight,
            tau=rank.tau,
            rho=rank.rho,
            offset=rank.offset,
            delta=rank.delta,
            start=rank.start,
            relevance_alpha=loss.relevance_alpha,
            temperature=loss.temperature,
            **changes,
        )

    def loss_config(self) -> HAPPIERLossConfig:
        """The loss recipe this config holds."""
        rank = RankApproximation(
            tau=self.tau, rho=self.rho, offset=self.offset, delta=self.delta, start=self.start
        )
        return HAPPIERLossConfig(
            hap_weight=self.hap_weight,
            cluster_weight=self.cluster_weight,
            rank=rank,
            relevance_alpha=self.relevance_alpha,
            temperature=self.temperature,
        )


PRODUCT_LR_MULT = 2.0
"""Learning-rate multiplier of the head and the proxies on Product (``dyml_product.yaml``)."""

HAPPIER_RECIPES: Mapping[str, HAPPIERConfig] = MappingProxyType(
    {
        dataset: HAPPIERConfig.from_loss_config(
            HAPPIER_LOSS_RECIPES[dataset],
            **(
                {"head_lr_mult": PRODUCT_LR_MULT, "proxy_lr_mult": PRODUCT_LR_MULT}
                if dataset == "product"
                else {}
            ),
        )
        for dataset in DATASETS
    }
)
"""The ``method`` section of each recipe (module docstring)."""


def happier_run(dataset: str) -> Mapping[str, Any]:
    """The run-level keys of the HAPPIER code's DyML configs for ``dataset`` (module docstring).

    :func:`methods._pml.dyml_run`, with torchvision's ImageNet weights on Product.

    Example:
        >>> happier_run("product")["model.backbone"], happier_run("vehicle")["model.backbone"]
        ('resnet34.tv_in1k', 'resnet34')
    """
    run = dyml_run(dataset)
    if dataset == "product":
        return MappingProxyType({**run, "model.backbone": TORCHVISION_RESNET34})
    return run


TORCHVISION_RESNET34 = "resnet34.tv_in1k"
"""timm's name of torchvision's ImageNet ResNet-34, the weights the official code loads
(``torchvision.models.resnet34(pretrained=True)``); timm's ``resnet34`` defaults to its own
``a1_in1k`` weights."""


class HeadAndProxies(Method):
    """A method with a :class:`HAPPIERHead` in ``self.head`` and its proxies in ``self.loss``.

    HAPPIER and CSL share it: the eval embedding is the head's output, and the parameter groups
    are ``"heads"`` and ``"proxies"`` with ``config.head_lr_mult`` and ``config.proxy_lr_mult``.
    """

    head: HAPPIERHead
    loss: nn.Module

    def embed(self, features: Tensor) -> Tensor:
        """The head's L2-normalised output, ``[batch, embedding_dim]``."""
        return self.head(features)

    def param_groups(self) -> list[ParamGroup]:
        """``"heads"`` and ``"proxies"``, with their multipliers."""
        return heads_and_proxies(
            heads=self.head,
            proxies=self.loss,
            head_lr_mult=self.config.head_lr_mult,
            proxy_lr_mult=self.config.proxy_lr_mult,
        )


@register_method("happier")
class HAPPIER(HeadAndProxies):
    """HAPPIER: the H-AP surrogate over the batch plus a fine-level cluster loss.

    Args:
        config: a :class:`HAPPIERConfig`.
        feature_dim: size of the backbone's pooled features.
        embedding_dim: size of the embedding (512 in the paper).
        hierarchy: the training hierarchy, at least two levels (the H-AP relevance needs them);
            its fine class count sizes the proxies.

    Example:
        >>> import numpy as np
        >>> hierarchy = Hierarchy.from_labels(np.array([[0, 0], [1, 0], [2, 1]]))
        >>> method = HAPPIER(
        ...     config=HAPPIER_RECIPES["toy"], feature_dim=8, embedding_dim=4, hierarchy=hierarchy
        ... )
        >>> [group.name for group in method.param_groups()]
        ['heads', 'proxies']
    """

    citation = (
        "E. Ramzi, N. Audebert, N. Thome, C. Rambour and X. Bitot. Hierarchical Average "
        "Precision Training for Pertinent Image Retrieval. ECCV 2022."
    )
    config_type = HAPPIERConfig
    needs = MethodNeeds(whole_batch=True)
    """H-AP ranks every item of the batch for every query: under DDP, the global batch."""

    def __init__(
        self,
        *,
        config: HAPPIERConfig,
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
        if self.n_levels < 2:
            raise ValueError(
                "`hierarchy` must have at least two levels for the H-AP relevance, "
                f"but got {self.n_levels}"
            )
        self.head = HAPPIERHead(feature_dim=feature_dim, embedding_dim=embedding_dim)
        self.loss = HAPPIERLoss(
            n_classes=self.n_classes[0], embedding_dim=embedding_dim, config=config.loss_config()
        )

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring for ``dataset``."""
        run = happier_run(dataset)
        return Recipe(method=HAPPIER_RECIPES[dataset], run=run)

    def training_step(self, batch: StepInput) -> StepOutput:
        """The weighted loss; the logs are its unweighted parts ``loss/hap``, ``loss/cluster``."""
        total, parts = self.loss(self.head(batch.features), batch.labels)
        return StepOutput(
            loss=total, logs={"loss/hap": parts["loss_hap"], "loss/cluster": parts["loss_cluster"]}
        )


class _SmoothHAP(torch.autograd.Function):
    """Per-query H-AP surrogate; the ``n^3`` work runs in blocks of (query, positive) pairs.

    Only pairs with a positive relevance are visited: the others add exactly zero to H-AP and
    to its gradient. The term of ``k = j`` is exactly the hard step of 0 (that is 1) in the rank
    and ``rel[i, j]`` in the h-rank, so summing over every ``k`` gives ``1 + sum_{k != j}`` and
    ``rel[i, j] + sum_{k != j}`` without a mask. The Jacobian of each query's H-AP with respect
    to its score row is accumulated in the same pass, so backward only scales it.
    """

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        match: Tensor,
        relevances: Tensor,
        approximation: RankApproximation,
    ) -> Tensor:
        needs_jacobian = ctx.needs_input_grad[0]
        queries, positives = (relevances > 0).nonzero(as_tuple=True)
        relevance_sums = relevances.sum(dim=1)
        hap = torch.zeros_like(relevance_sums)
        jacobian = torch.zeros_like(scores) if needs_jacobian else None

        block_size = max(1, _CHUNK_ELEMENTS // scores.shape[1])
        for start in range(0, len(queries), block_size):
            i, j = queries[start : start + block_size], positives[start : start + block_size]
            differences = scores[i] - scores[i, j].unsqueeze(1)
            inferior = match[i] < match[i, j].unsqueeze(1)
            ordered = differences >= 0
            sigmoid = torch.sigmoid((differences / approximation.tau).clamp_(-50, 50))

            steps = torch.where(
                inferior, _smooth_step(differences, sigmoid, approximation), ordered
            )
            ranks = steps.sum(dim=1)
            shared = torch.minimum(relevances[i], relevances[i, j].unsqueeze(1))
            hranks = (shared * ordered).sum(dim=1)
            hap.index_add_(0, i, hranks / ranks)

            if needs_jacobian:
                slopes = _smooth_step_slope(differences, sigmoid, approximation)
                weights = (-hranks / (ranks * ranks) / relevance_sums[i]).unsqueeze(1)
                # d = S[i, k] - S[i, j]: +slope on the item k, -sum of slopes on the positive j.
                weighted = torch.where(inferior, slopes, 0) * weights
                jacobian.index_add_(0, i, weighted)
                jacobian.index_put_((i, j), -weighted.sum(dim=1), accumulate=True)

        ctx.save_for_backward(jacobian)
        return hap / relevance_sums

    @staticmethod
    def backward(ctx: Any, grad_hap: Tensor) -> tuple[Tensor | None, ...]:
        (jacobian,) = ctx.saved_tensors
        return grad_hap.unsqueeze(1) * jacobian, None, None, None


def _smooth_step(differences: Tensor, sigmoid: Tensor, approximation: RankApproximation) -> Tensor:
    linear = approximation.rho * (differences - approximation.delta) + approximation.offset
    above = torch.where(differences > approximation.delta, linear, sigmoid + approximation.start)
    return torch.where(differences > 0, above, sigmoid)


def _smooth_step_slope(
    differences: Tensor, sigmoid: Tensor, approximation: RankApproximation
) -> Tensor:
    clamped = differences.abs() > 50 * approximation.tau
    slope = (sigmoid * (1 - sigmoid) / approximation.tau).masked_fill_(clamped, 0)
    return torch.where(differences > approximation.delta, approximation.rho, slope)
