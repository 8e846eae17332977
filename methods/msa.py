"""MSA: multi-scale similarity aggregation, its heads, eval embedding and losses.

Zhang, Li and Zhang, "Multi-Scale Similarity Aggregation for Dynamic Metric Learning", ACM
Multimedia 2023 (official code: github.com/Dyfine/MSA). The losses reproduce the official
``ClusterLoss_MultiEmb`` and ``ClusterLoss_SingleEmb`` number for number in float32.

Vocabulary: ``embeddings`` is ``[n, n_levels * dim_per_level]``, one chunk per level, fine first;
``labels`` is ``[n, n_levels]`` with column 0 the finest level; a *recipe* is a method's
per-dataset hyperparameters. The losses expect float32 inputs and are meant to run outside
autocast (the official training ran them under fp16 autocast; the reference values are float32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BLOCK_ELEMENTS = 2**16
"""About how many pair terms (``[n_levels, rows, n]``) the cross-level loss holds at once; the
rows are split into equal blocks of about this size (256 KiB in float32)."""


@dataclass(frozen=True)
class MSALossConfig:
    """Hyperparameters of the MSA loss for one dataset (a recipe).

    Attributes:
        proxies_per_class: number of proxies of every class, per level, fine first.
        margin: additive margin subtracted from the target class similarity.
        scale: scale applied to the margin-adjusted class similarities (the logits).
        alpha: weight of the cross-level similarity constraint.
        beta: weight of the instance alignment with the EMA teacher.
        single_embedding: use the single-embedding variant that the published DyML-Product
            number comes from: the fine-level multi-proxy loss on the whole embedding plus
            ``beta`` times the alignment, no cross-level term. Only ``proxies_per_class[0]``,
            ``margin``, ``scale`` and ``beta`` are then used; pair it with
            ``MSAHeads(n_levels=1, norm_before_fc=True)``, the official single-embedding model.
        pooling_factor: sharpness of the softmax that pools a class's proxy similarities (10 in
            the official code).
    """

    proxies_per_class: tuple[int, ...]
    margin: float
    scale: float
    alpha: float
    beta: float
    single_embedding: bool = False
    pooling_factor: float = 10.0

    def __post_init__(self) -> None:
        if not self.proxies_per_class or min(self.proxies_per_class) < 1:
            raise ValueError(
                "`proxies_per_class` must hold a positive count per level, "
                f"but got {self.proxies_per_class}"
            )
        for name in ("scale", "pooling_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, but got {getattr(self, name)}")
        for name in ("margin", "alpha", "beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be non-negative, but got {getattr(self, name)}")


MSA_LOSS_RECIPES: Mapping[str, MSALossConfig] = MappingProxyType(
    {
        "vehicle": MSALossConfig(
            proxies_per_class=(2, 20, 4), margin=0.1, scale=20.0, alpha=0.25, beta=0.75
        ),
        "animal": MSALossConfig(
            proxies_per_class=(28, 4, 2), margin=0.0, scale=20.0, alpha=0.25, beta=0.75
        ),
        "product": MSALossConfig(
            proxies_per_class=(22, 3, 2),
            margin=0.0,
            scale=20.0,
            alpha=0.25,
            beta=0.1,
            single_embedding=True,
        ),
        "toy": MSALossConfig(
            proxies_per_class=(2, 2, 2), margin=0.1, scale=20.0, alpha=0.25, beta=0.75
        ),
    }
)
"""The paper's loss settings per dataset (official code), plus a small one for the toy data."""


class MSAHeads(nn.Module):
    """MSA's projection heads on the pooled backbone feature.

    ``fc`` projects the feature to one chunk per level and a LayerNorm without affine
    parameters standardises the result; ``fc_aux`` is a second projection of the raw feature
    that feeds only the instance alignment with the EMA teacher.

    Args:
        in_features: size of the pooled backbone feature (512 for ResNet-34).
        dim_per_level: size of each level's chunk (171 in the paper, 513 for the
            single-embedding variant).
        n_levels: number of levels, that is of chunks.
        norm_before_fc: standardise the backbone feature before ``fc`` instead of standardising
            ``fc``'s output; the official single-embedding DyML-Product model does this.

    Example:
        >>> heads = MSAHeads(in_features=8, dim_per_level=3, n_levels=2)
        >>> embeddings, aux_embeddings = heads(torch.randn(4, 8))
        >>> tuple(embeddings.shape), tuple(aux_embeddings.shape)
        ((4, 6), (4, 6))
    """

    def __init__(
        self,
        *,
        in_features: int,
        dim_per_level: int,
        n_levels: int = 3,
        norm_before_fc: bool = False,
    ) -> None:
        super().__init__()
        if n_levels < 1:
            raise ValueError(f"`n_levels` must be at least 1, but got {n_levels}")
        self.n_levels = n_levels
        embedding_dim = n_levels * dim_per_level
        self.norm = nn.LayerNorm(
            in_features if norm_before_fc else embedding_dim, elementwise_affine=False
        )
        self.norm_before_fc = norm_before_fc
        self.fc = nn.Linear(in_features, embedding_dim)
        self.fc_aux = nn.Linear(in_features, embedding_dim)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Project pooled features.

        Args:
            features: pooled backbone features, ``[n, in_features]``.

        Returns:
            The training embeddings ``[n, n_levels * dim_per_level]`` (chunk ``l`` is level
            ``l``, not normalised) and the auxiliary embeddings of the same shape.
        """
        if self.norm_before_fc:
            embeddings = self.fc(self.norm(features))
        else:
            embeddings = self.norm(self.fc(features))
        return embeddings, self.fc_aux(features)


def msa_eval_embedding(embeddings: Tensor, *, n_levels: int) -> Tensor:
    """Eval-time MSA embedding: per-level chunks normalised, concatenated, scaled.

    Each chunk is L2-normalised and the concatenation divided by ``sqrt(n_levels)``, so the dot
    product of two eval embeddings is the mean of their per-level cosine similarities (the
    "similarity aggregation") and every eval embedding has unit norm.

    Args:
        embeddings: training embeddings from :class:`MSAHeads`, ``[n, n_levels * dim]``.
        n_levels: number of chunks.

    Returns:
        The eval embeddings, ``[n, n_levels * dim]``.

    Example:
        >>> x = msa_eval_embedding(torch.tensor([[3.0, 4.0, 0.0, 2.0]]), n_levels=2)
        >>> y = msa_eval_embedding(torch.tensor([[3.0, 4.0, 1.0, 0.0]]), n_levels=2)
        >>> round(float(x @ y.T), 6)  # mean of the per-level cosines 1 and 0
        0.5
    """
    chunks = _level_chunks(embeddings, n_levels)
    return F.normalize(chunks, dim=2).flatten(1) / math.sqrt(n_levels)


def instance_alignment_loss(aux_embeddings: Tensor, teacher_aux_embeddings: Tensor) -> Tensor:
    """Cross-entropy between the teacher's and the student's softmax over normalised features.

    Both inputs are L2-normalised; the target is ``softmax`` of the teacher's, the prediction
    ``log_softmax`` of the student's, both at temperature 1. The teacher is detached.

    Args:
        aux_embeddings: the student's ``fc_aux`` output, ``[n, dim]``.
        teacher_aux_embeddings: the EMA teacher's ``fc_aux`` output, ``[n, dim]``.

    Returns:
        The batch mean, a scalar.
    """
    target = torch.softmax(F.normalize(teacher_aux_embeddings.detach(), dim=1), dim=1)
    log_probs = torch.log_softmax(F.normalize(aux_embeddings, dim=1), dim=1)
    return (-target * log_probs).sum(dim=1).mean()


def cross_level_loss(level_embeddings: Tensor, labels: Tensor) -> Tensor:
    """MSA's cross-level similarity constraint.

    With ``S_l`` the cosine matrix of level ``l`` (diagonal included), the target order of every
    pair is ``S_0 <= S_1 <= ...`` (fine to coarse). Each level's pair term is ``(1 - S_l)^2`` for
    pairs positive at that level and ``(1 + S_l)^2`` for negative ones. A positive pair of level
    ``l`` is violated by every coarser level ``u`` with ``S_u < S_l``, a negative pair by every
    finer level ``d`` with ``S_d > S_l``: the violated term is switched off and each violating
    level's own term is added instead. With three levels this is exactly the official rule; the
    masks carry no gradient, every level's sum is divided by ``n^2`` and the levels are averaged.

    The masks are folded into one count per level and pair (how often that level's term is
    added), so the loss is ``sum_l sum(count_l * (S_l - t_l)^2) / (n_levels * n^2)`` with
    ``t_l = +-1``. It is computed over blocks of rows of the ``S_l``, each block's gradient
    pushed onto the embeddings at once, so no ``n x n`` matrix outlives its block.

    Args:
        level_embeddings: L2-normalised chunks, ``[n_levels, n, dim]``.
        labels: ``[n, n_levels]``, column 0 the finest level.

    Returns:
        The unweighted constraint (the official ``loss_cross_level / alpha``), a scalar.
    """
    return _CrossLevel.apply(level_embeddings, labels)


class _CrossLevel(torch.autograd.Function):
    """:func:`cross_level_loss` over row blocks, with its gradient built in the forward pass."""

    @staticmethod
    def forward(ctx: Any, level_embeddings: Tensor, labels: Tensor) -> Tensor:
        level_embeddings = level_embeddings.contiguous()
        transposed = level_embeddings.transpose(1, 2).contiguous()
        n_levels, batch_size = level_embeddings.shape[:2]
        level_labels = labels.T
        normaliser = 1.0 / (n_levels * batch_size**2)
        total = level_embeddings.new_zeros(())
        grad = torch.zeros_like(level_embeddings) if ctx.needs_input_grad[0] else None

        n_blocks = math.ceil(n_levels * batch_size**2 / _BLOCK_ELEMENTS)
        block_size = math.ceil(batch_size / n_blocks)
        for start in range(0, batch_size, block_size):
            rows = slice(start, start + block_size)
            sims = level_embeddings[:, rows] @ transposed
            positives = level_labels[:, rows, None] == level_labels[:, None, :]
            residuals = torch.where(positives, sims - 1, sims + 1)
            weighted = _term_counts(sims, positives).mul_(residuals)
            total += (weighted * residuals).sum()

            if grad is not None:
                # dL/dS = 2 count (S - t) / (n_levels n^2), and S = X X^T gives G X + G^T X.
                weighted.mul_(2 * normaliser)
                grad[:, rows] += weighted @ level_embeddings
                grad += weighted.transpose(1, 2) @ level_embeddings[:, rows]

        ctx.save_for_backward(grad)
        return total * normaliser

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, None]:
        (grad,) = ctx.saved_tensors
        return grad_loss * grad, None


def _term_counts(sims: Tensor, positives: Tensor) -> Tensor:
    """How often each level's pair term counts, for ``[n_levels, rows, n]`` similarities.

    A level's own term counts once where its order holds; a level's term also counts once for
    every other level whose order it breaks.
    """
    counts = torch.zeros_like(sims)
    for level in range(len(sims)):
        own = sims[level]
        finer_breaks = ~positives[level] & (sims[:level] > own)
        coarser_breaks = positives[level] & (sims[level + 1 :] < own)
        counts[:level] += finer_breaks
        counts[level + 1 :] += coarser_breaks
        counts[level] += ~(finer_breaks.any(dim=0) | coarser_breaks.any(dim=0))
    return counts


class MultiProxyLoss(nn.Module):
    """MSA's per-level cluster loss: a multi-proxy normalised softmax with a margin.

    Every class owns ``proxies_per_class`` proxies; rows ``c * K .. c * K + K - 1`` of
    :attr:`proxies` belong to class ``c``. A class's similarity is the mean of its proxies'
    cosine similarities weighted by ``softmax(pooling_factor * cos)`` over those proxies; the
    logits are ``scale * (similarity - margin * onehot(label))``, scored with cross-entropy.
    Proxies start uniform in ``+-1 / sqrt(dim)``, as in the official code.

    Args:
        n_classes: number of classes at this level.
        dim: embedding size at this level.
        proxies_per_class: number of proxies per class.
        margin: additive margin on the target class.
        scale: logit scale.
        pooling_factor: sharpness of the proxy pooling softmax.
    """

    def __init__(
        self,
        *,
        n_classes: int,
        dim: int,
        proxies_per_class: int,
        margin: float,
        scale: float,
        pooling_factor: float = 10.0,
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.proxies_per_class = proxies_per_class
        self.margin = margin
        self.scale = scale
        self.pooling_factor = pooling_factor
        bound = 1.0 / math.sqrt(dim)
        self.proxies = nn.Parameter(
            torch.empty(n_classes * proxies_per_class, dim).uniform_(-bound, bound)
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            embeddings: ``[n, dim]``, L2-normalised here.
            labels: class ids at this level, ``[n]``.

        Returns:
            The batch-mean cross-entropy, a scalar.
        """
        sims = F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T
        sims = sims.unflatten(1, (self.n_classes, self.proxies_per_class))
        pooling = torch.softmax(sims * self.pooling_factor, dim=2)
        class_sims = (sims * pooling).sum(dim=2)
        target = F.one_hot(labels, self.n_classes).to(class_sims.dtype)
        logits = (class_sims - self.margin * target) * self.scale
        return F.cross_entropy(logits, labels)


class MSALoss(nn.Module):
    """The multi-level MSA loss: per-level clustering, cross-level constraint, alignment.

    ``total = mean_l cluster_l + alpha * cross_level + beta * instance_alignment``, with
    :class:`MultiProxyLoss` on each level's chunk, :func:`cross_level_loss` on the normalised
    chunks and :func:`instance_alignment_loss` between the student's and the EMA teacher's
    ``fc_aux`` outputs.

    Args:
        n_classes: number of training classes per level, fine first.
        embedding_dim: size of the whole embedding, ``n_levels * dim_per_level``.
        config: the loss recipe; ``config.proxies_per_class`` needs one entry per level.

    Example:
        >>> config = MSALossConfig(
        ...     proxies_per_class=(2, 2), margin=0.1, scale=20.0, alpha=0.25, beta=0.75
        ... )
        >>> loss = MSALoss(n_classes=(4, 2), embedding_dim=6, config=config)
        >>> labels = torch.tensor([[0, 0], [1, 0], [2, 1], [3, 1]])
        >>> total, parts = loss(torch.randn(4, 6), labels, torch.randn(4, 6), torch.randn(4, 6))
        >>> total.ndim, list(parts)[:3]
        (0, ['loss_cluster', 'loss_cluster0', 'loss_cluster1'])
    """

    def __init__(
        self, *, n_classes: Sequence[int], embedding_dim: int, config: MSALossConfig
    ) -> None:
        super().__init__()
        n_levels = len(n_classes)
        if len(config.proxies_per_class) != n_levels:
            raise ValueError(
                f"`config.proxies_per_class` must hold one count per level ({n_levels}), "
                f"but got {config.proxies_per_class}"
            )
        if embedding_dim % n_levels:
            raise ValueError(
                f"`embedding_dim` must be a multiple of the number of levels ({n_levels}), "
                f"but got {embedding_dim}"
            )
        self.n_levels = n_levels
        self.alpha = config.alpha
        self.beta = config.beta
        self.cluster_losses = nn.ModuleList(
            MultiProxyLoss(
                n_classes=classes,
                dim=embedding_dim // n_levels,
                proxies_per_class=proxies,
                margin=config.margin,
                scale=config.scale,
                pooling_factor=config.pooling_factor,
            )
            for classes, proxies in zip(n_classes, config.proxies_per_class, strict=True)
        )

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        aux_embeddings: Tensor,
        teacher_aux_embeddings: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            embeddings: training embeddings from :class:`MSAHeads`, ``[n, embedding_dim]``.
            labels: ``[n, n_levels]``, column 0 the finest level.
            aux_embeddings: the student's ``fc_aux`` output, ``[n, aux_dim]``.
            teacher_aux_embeddings: the EMA teacher's ``fc_aux`` output, ``[n, aux_dim]``.

        Returns:
            The total loss and its detached components: ``loss_cluster`` (the level mean),
            ``loss_cluster<l>`` per level, ``loss_cross_level`` (already times ``alpha``) and
            ``loss_instance_alignment`` (already times ``beta``), as the official code logs them.
        """
        _check_labels(labels, self.n_levels)
        chunks = _level_chunks(embeddings, self.n_levels)

        per_level = [
            loss(chunks[:, level], labels[:, level])
            for level, loss in enumerate(self.cluster_losses)
        ]
        cluster = sum(per_level) / self.n_levels
        cross = cross_level_loss(F.normalize(chunks, dim=2).transpose(0, 1), labels)
        alignment = instance_alignment_loss(aux_embeddings, teacher_aux_embeddings)

        total = cluster + self.alpha * cross + self.beta * alignment
        components = {
            "loss_cluster": cluster,
            **{f"loss_cluster{level}": loss for level, loss in enumerate(per_level)},
            "loss_cross_level": cross * self.alpha,
            "loss_instance_alignment": alignment * self.beta,
        }
        return total, {name: value.detach() for name, value in components.items()}


class MSASingleEmbeddingLoss(nn.Module):
    """The single-embedding MSA loss behind the published DyML-Product number.

    ``total = cluster_fine + beta * instance_alignment``: :class:`MultiProxyLoss` with the fine
    labels on the whole embedding, and no cross-level term (official ``ClusterLoss_SingleEmb``).

    Args:
        n_classes: number of training classes per level, fine first; only the fine count is
            used.
        embedding_dim: size of the embedding.
        config: the loss recipe; ``proxies_per_class[0]``, ``margin``, ``scale`` and ``beta``
            are used.
    """

    def __init__(
        self, *, n_classes: Sequence[int], embedding_dim: int, config: MSALossConfig
    ) -> None:
        super().__init__()
        self.n_levels = len(n_classes)
        self.beta = config.beta
        self.cluster_loss = MultiProxyLoss(
            n_classes=n_classes[0],
            dim=embedding_dim,
            proxies_per_class=config.proxies_per_class[0],
            margin=config.margin,
            scale=config.scale,
            pooling_factor=config.pooling_factor,
        )

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        aux_embeddings: Tensor,
        teacher_aux_embeddings: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            embeddings: training embeddings, ``[n, embedding_dim]``.
            labels: ``[n, n_levels]``, column 0 the finest level (the only one used).
            aux_embeddings: the student's ``fc_aux`` output, ``[n, aux_dim]``.
            teacher_aux_embeddings: the EMA teacher's ``fc_aux`` output, ``[n, aux_dim]``.

        Returns:
            The total loss and its detached components ``loss_cluster0`` and
            ``loss_instance_alignment`` (already times ``beta``; the official code spells this
            key ``loss_instance_alignmnet``).
        """
        _check_labels(labels, self.n_levels)
        cluster = self.cluster_loss(embeddings, labels[:, 0])
        alignment = instance_alignment_loss(aux_embeddings, teacher_aux_embeddings) * self.beta
        total = cluster + alignment
        return total, {
            "loss_cluster0": cluster.detach(),
            "loss_instance_alignment": alignment.detach(),
        }


def build_msa_loss(
    *, config: MSALossConfig, n_classes: Sequence[int], embedding_dim: int
) -> MSALoss | MSASingleEmbeddingLoss:
    """Build the MSA loss variant that ``config`` selects.

    Args:
        config: the loss recipe, e.g. ``MSA_LOSS_RECIPES["vehicle"]``.
        n_classes: number of training classes per level, fine first.
        embedding_dim: size of the embedding the heads produce.

    Returns:
        :class:`MSASingleEmbeddingLoss` when ``config.single_embedding``, else :class:`MSALoss`.

    Example:
        >>> loss = build_msa_loss(
        ...     config=MSA_LOSS_RECIPES["vehicle"], n_classes=(12, 5, 3), embedding_dim=48
        ... )
        >>> [tuple(m.proxies.shape) for m in loss.cluster_losses]
        [(24, 16), (100, 16), (12, 16)]
    """
    loss_class = MSASingleEmbeddingLoss if config.single_embedding else MSALoss
    return loss_class(n_classes=n_classes, embedding_dim=embedding_dim, config=config)


def _level_chunks(embeddings: Tensor, n_levels: int) -> Tensor:
    """View ``[n, n_levels * dim]`` embeddings as ``[n, n_levels, dim]`` chunks."""
    if embeddings.ndim != 2 or embeddings.shape[1] % n_levels:
        raise ValueError(
            f"`embeddings` must be [n, {n_levels} * dim_per_level], "
            f"but got shape {tuple(embeddings.shape)}"
        )
    return embeddings.unflatten(1, (n_levels, -1))


def _check_labels(labels: Tensor, n_levels: int) -> None:
    if labels.ndim != 2 or labels.shape[1] != n_levels:
        raise ValueError(
            f"`labels` must be [n, {n_levels}], one column per level, "
            f"but got shape {tuple(labels.shape)}"
        )
