"""HAPPIER: hierarchical average precision training, its H-AP surrogate and cluster loss.

Ramzi, Audebert, Thome, Rambour and Bitot, "Hierarchical Average Precision Training for
Pertinent Image Retrieval", ECCV 2022 (official code: github.com/elias-ramzi/HAPPIER). The losses
reproduce the official ``HAPLoss`` (batch-vs-batch path) and ``ClusterLoss`` number for number in
float32, gradients included (see :func:`hap_surrogate` for what the gradient is).

Vocabulary: ``embeddings`` is ``[n, dim]`` (L2-normalised by the network; the losses do not
normalise them again); ``labels`` is ``[n, n_levels]`` with column 0 the finest level; the
*match* of two items is the number of label columns on which they agree; a *recipe* is a method's
per-dataset hyperparameters. The losses expect float32 inputs and are meant to run outside
autocast.
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
