"""MSA: multi-scale similarity aggregation, its heads, eval embedding, losses and the method.

Zhang, Li and Zhang, "Multi-Scale Similarity Aggregation for Dynamic Metric Learning", ACM
Multimedia 2023 (official code: github.com/Dyfine/MSA). The losses reproduce the official
``ClusterLoss_MultiEmb`` and ``ClusterLoss_SingleEmb`` number for number in float32.

Vocabulary: ``embeddings`` is ``[n, n_levels * dim_per_level]``, one chunk per level, fine first;
``labels`` is ``[n, n_levels]`` with column 0 the finest level; a *recipe* is a method's
per-dataset hyperparameters. The losses expect float32 inputs and are meant to run outside
autocast (the official training ran them under fp16 autocast; the reference values are float32).

The registered method ``msa`` (:class:`MSA`) puts these together:

- heads (:class:`MSAHeads`): ``fc`` from the pooled feature to ``n_levels`` chunks of
  ``model.embedding_dim / n_levels`` (513 = 3 x 171 in the paper), LayerNorm without affine
  after it, and ``fc_aux`` of the same size for the alignment loss;
- loss: :class:`MSALoss`, the per-level multi-proxy cluster loss plus ``alpha`` times the
  cross-level constraint plus ``beta`` times the alignment of the online ``fc_aux`` output with
  the EMA teacher's (the teacher's L2-normalised ``fc_aux`` output is
  :meth:`MSA.teacher_output`);
- teacher: an EMA copy of the whole network (backbone and heads), updated after every optimiser
  step with momentum 0.9999, constant (official ``ema_m: 0.9999``, ``ema_m_increase: False``),
  fed the same augmented images as the online network (``ema_same_aug: True``);
- eval embedding (:func:`msa_eval_embedding`): each chunk L2-normalised, concatenated, divided
  by ``sqrt(n_levels)``, so a dot product is the mean of the per-level cosines;
- parameter groups: ``"heads"`` (``fc`` and ``fc_aux``) and ``"proxies"`` with their own
  learning-rate multipliers (the official loss's proxies take the optimiser settings of ``fc``).

EMA buffers. The official update function (``lib.momentum_update``) is not in the released code,
so whether it averages the batch-norm statistics is unknown. The teacher follows
:class:`dymlbench.models.EMASpec`'s ``buffers="average"`` by default: the floating-point
buffers are averaged with the parameters' momentum, so the teacher's statistics describe its
averaged weights; ``--set method.ema_buffers=copy`` copies the student's instead.

The single-embedding variant. The published DyML-Product number is the single-embedding model
(official ``run_product_msa.sh``, README: about 68% R@1 against 66% for the full MSA): the
fine-level multi-proxy loss on the whole 513-d embedding plus ``beta`` times the alignment, no
cross-level term, LayerNorm on the backbone feature before ``fc`` (official
``product_r34_single_emb.yaml``: ``use_sep: False``), and the whole embedding L2-normalised for
evaluation. It is the switch ``method.single_embedding`` of the one key ``msa`` rather than a
second key, so that ``dymlbench run msa --dataset product`` runs what the paper reports. The
multi-embedding Product setting (proxies 22/3/2, margin 0, scale 20, alpha 0.25, beta 0.1) stays
in the recipe; the official multi-embedding Product run also uses ``lr 0.01``
(``product_sgd1.yaml``), so it is ``--set method.single_embedding=false --set optim.lr=0.01``.

Recipes (official ``run_*_msa.sh`` and ``config/{model,optimizer,loss}``; REFERENCE.md section 4),
every one with a ResNet-34, a 513-d embedding, batches of 64 fine classes x 4 images, the cosine
schedule stepped once per epoch, and the online network's metrics reported
(``engine.report_network=online``: the published numbers are the online network's):

- Vehicle: proxies 2/20/4, margin 0.1, scale 20, alpha 0.25, beta 0.75; Adam, lr 1e-3 for the
  backbone, heads and proxies (x1), weight decay 2e-4, 70 epochs, cosine to 1e-6;
- Animal: proxies 28/4/2, margin 0, scale 20, alpha 0.25, beta 0.75; SGD with Nesterov momentum
  0.9, lr 1e-2 (heads and proxies x1), weight decay 5e-5, 100 epochs, cosine to 1e-6 (official
  ``eta_min``), the backbone not stepped for the first 40 epochs (``optim.freeze_epochs=40``,
  ``optim.freeze_groups=[backbone]``; heads and proxies are) and the schedule held meanwhile
  (``optim.schedule_during_freeze=hold``: the official loop steps no epoch schedule during the
  warm-up, so the cosine starts after epoch 40 and ends near 0.0036 rather than 1e-6);
- Product: the single-embedding variant, 22 proxies, margin 0, scale 20, beta 0.1; SGD Nesterov
  0.9, lr 5e-3 with heads and proxies x4, weight decay 1e-4, 20 epochs, cosine to 1e-5,
  batch-norm frozen;
- toy: ``test_resnet`` from scratch, 3 x 32 = 96-d, proxies 2/2/2, margin 0.1, scale 20, alpha
  0.25, beta 0.75, 16 classes x 4 images, Adam lr 1e-3, weight decay 2e-4, 2 epochs, cosine, and
  an EMA momentum of 0.99 (0.9999 would keep the teacher at its initialisation over the 60 steps
  of the run).

Initialisation. The published runs start from a ResNet-34 trained with DINO on each DyML train
set: the online backbone from the checkpoint's ``student``, the EMA teacher's backbone from its
``teacher`` (the heads of both from the same random draw). Pass the checkpoint with
``--weights PATH`` (``model.pretrained=PATH``). Without it the recipes train from scratch (the
official ``pretrained: False`` before the DINO weights are loaded), and the result is not
comparable with the published numbers.

Teacher batch norm. The official teacher is never put in eval mode while training, so its
batch-norm layers normalise with each batch's statistics: ``method.ema_batchnorm=batch`` (the
default; :class:`dymlbench.models.EMASpec`), except where the run freezes batch norm (Product),
which holds for the teacher too. ``method.ema_batchnorm=running`` uses the running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymlbench.config import DATASETS, ConfigError, MethodConfig, bounded
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
from dymlbench.models import EMASpec
from dymlbench.registry import register_method

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


@dataclass(frozen=True, kw_only=True)
class MSAConfig(MethodConfig):
    """The ``method`` section of an MSA run: the loss recipe, learning rates and the teacher.

    The loss keys are those of :class:`MSALossConfig`; the defaults are the Vehicle recipe.

    Attributes:
        proxies_per_class: proxies of every class, per level, fine first (one entry per level of
            the training hierarchy; the single-embedding variant uses only the first).
        margin: additive margin on the target class similarity.
        scale: logit scale.
        alpha: weight of the cross-level constraint.
        beta: weight of the alignment with the EMA teacher.
        single_embedding: the single-embedding variant (module docstring): one chunk, the
            fine-level loss on the whole embedding, LayerNorm before ``fc``, no cross term.
        pooling_factor: sharpness of the softmax pooling a class's proxy similarities.
        head_lr_mult: learning-rate multiplier of the group ``"heads"`` (``fc``, ``fc_aux``).
        proxy_lr_mult: learning-rate multiplier of the group ``"proxies"``.
        ema_momentum: momentum of the EMA teacher, constant over the run.
        ema_buffers: ``"average"`` or ``"copy"`` the student's floating-point buffers into the
            teacher (:class:`dymlbench.models.EMASpec`).
        ema_batchnorm: the teacher's batch norm while training: the ``"batch"``'s statistics
            (the official teacher's) or the ``"running"`` ones.
    """

    proxies_per_class: tuple[int, ...] = (2, 20, 4)
    margin: float = bounded(0.1, ge=0.0)
    scale: float = bounded(20.0, gt=0.0)
    alpha: float = bounded(0.25, ge=0.0)
    beta: float = bounded(0.75, ge=0.0)
    single_embedding: bool = False
    pooling_factor: float = bounded(10.0, gt=0.0)
    head_lr_mult: float = bounded(1.0, gt=0.0)
    proxy_lr_mult: float = bounded(1.0, gt=0.0)
    ema_momentum: float = bounded(0.9999, ge=0.0, le=1.0)
    ema_buffers: Literal["average", "copy"] = "average"
    ema_batchnorm: Literal["batch", "running"] = "batch"

    def validate(self) -> None:
        """Check that every level has at least one proxy per class."""
        if not self.proxies_per_class or min(self.proxies_per_class) < 1:
            raise ConfigError(
                "proxies_per_class",
                f"must hold a positive count per level, but got {list(self.proxies_per_class)}",
            )

    @classmethod
    def from_loss_config(cls, loss: MSALossConfig, **changes: Any) -> MSAConfig:
        """The method config holding the loss recipe ``loss``, with other keys in ``changes``."""
        fields = {name: getattr(loss, name) for name in _LOSS_KEYS}
        return cls(**fields, **changes)

    def loss_config(self) -> MSALossConfig:
        """The loss recipe this config holds."""
        return MSALossConfig(**{name: getattr(self, name) for name in _LOSS_KEYS})


_LOSS_KEYS = (
    "proxies_per_class",
    "margin",
    "scale",
    "alpha",
    "beta",
    "single_embedding",
    "pooling_factor",
)

MSA_RECIPES: Mapping[str, MSAConfig] = MappingProxyType(
    {
        "vehicle": MSAConfig.from_loss_config(MSA_LOSS_RECIPES["vehicle"]),
        "animal": MSAConfig.from_loss_config(MSA_LOSS_RECIPES["animal"]),
        "product": MSAConfig.from_loss_config(
            MSA_LOSS_RECIPES["product"], head_lr_mult=4.0, proxy_lr_mult=4.0
        ),
        "toy": MSAConfig.from_loss_config(MSA_LOSS_RECIPES["toy"], ema_momentum=0.99),
    }
)
"""The ``method`` section of each recipe (module docstring)."""

_RESNET34_RUN: Mapping[str, Any] = {
    "model.backbone": "resnet34",
    "model.pretrained": "scratch",
    "model.embedding_dim": 513,
    "optim.schedule": "cosine",
    "optim.schedule_unit": "epoch",
    "optim.classes_per_batch": 64,
    "optim.images_per_class": 4,
    "engine.report_network": "online",
}

MSA_RUNS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "vehicle": MappingProxyType(
            {
                **_RESNET34_RUN,
                "optim.optimizer": "adam",
                "optim.lr": 1e-3,
                "optim.weight_decay": 2e-4,
                "optim.epochs": 70,
                "optim.min_lr": 1e-6,
                "optim.freeze_epochs": 0,
                "optim.freeze_batchnorm": False,
            }
        ),
        "animal": MappingProxyType(
            {
                **_RESNET34_RUN,
                "optim.optimizer": "sgd",
                "optim.lr": 1e-2,
                "optim.momentum": 0.9,
                "optim.nesterov": True,
                "optim.weight_decay": 5e-5,
                "optim.epochs": 100,
                "optim.min_lr": 1e-6,
                "optim.freeze_epochs": 40,
                "optim.freeze_groups": ("backbone",),
                "optim.schedule_during_freeze": "hold",
                "optim.freeze_batchnorm": False,
            }
        ),
        "product": MappingProxyType(
            {
                **_RESNET34_RUN,
                "optim.optimizer": "sgd",
                "optim.lr": 5e-3,
                "optim.momentum": 0.9,
                "optim.nesterov": True,
                "optim.weight_decay": 1e-4,
                "optim.epochs": 20,
                "optim.min_lr": 1e-5,
                "optim.freeze_epochs": 0,
                "optim.freeze_batchnorm": True,
            }
        ),
        "toy": MappingProxyType(
            {
                "model.backbone": "test_resnet",
                "model.pretrained": "scratch",
                "model.embedding_dim": 96,
                "optim.optimizer": "adam",
                "optim.lr": 1e-3,
                "optim.weight_decay": 2e-4,
                "optim.epochs": 2,
                "optim.schedule": "cosine",
                "optim.classes_per_batch": 16,
                "optim.images_per_class": 4,
                "engine.report_network": "online",
            }
        ),
    }
)
"""The run-level keys of each recipe (module docstring)."""


@register_method("msa")
class MSA(Method):
    """MSA: per-level multi-proxy clustering, the cross-level constraint, EMA alignment.

    Args:
        config: an :class:`MSAConfig`.
        feature_dim: size of the backbone's pooled features (512 for ResNet-34).
        embedding_dim: size of the embedding, a multiple of the number of levels (one chunk per
            level; any size for the single-embedding variant).
        hierarchy: the training hierarchy; its class counts size the proxies and its level names
            name the logs.

    Example:
        >>> import dataclasses
        >>> import numpy as np
        >>> hierarchy = Hierarchy.from_labels(np.array([[0, 0], [1, 0], [2, 1], [3, 1]]))
        >>> config = dataclasses.replace(MSA_RECIPES["toy"], proxies_per_class=(2, 2))
        >>> method = MSA(config=config, feature_dim=8, embedding_dim=6, hierarchy=hierarchy)
        >>> method.embed(torch.randn(5, 8)).shape
        torch.Size([5, 6])
    """

    citation = (
        "D. Zhang, Y. Li and Z. Zhang. Multi-Scale Similarity Aggregation for Dynamic Metric "
        "Learning. ACM Multimedia 2023."
    )
    config_type = MSAConfig

    def __init__(
        self,
        *,
        config: MSAConfig,
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
        if not config.single_embedding and len(config.proxies_per_class) != self.n_levels:
            raise ValueError(
                f"`method.proxies_per_class` must hold one count per level of the training "
                f"hierarchy ({self.n_levels}), but got {list(config.proxies_per_class)}; "
                "set it with --set method.proxies_per_class=[...]"
            )
        n_chunks = 1 if config.single_embedding else self.n_levels
        if embedding_dim % n_chunks:
            raise ValueError(
                f"`embedding_dim` must be a multiple of the number of levels ({n_chunks}), "
                f"but got {embedding_dim}; set model.embedding_dim (513 = 3 x 171 in the paper)"
            )
        self.level_names = hierarchy.level_names
        self.heads = MSAHeads(
            in_features=feature_dim,
            dim_per_level=embedding_dim // n_chunks,
            n_levels=n_chunks,
            norm_before_fc=config.single_embedding,
        )
        self.loss = build_msa_loss(
            config=config.loss_config(), n_classes=self.n_classes, embedding_dim=embedding_dim
        )

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring for ``dataset``."""
        if dataset not in MSA_RECIPES:
            raise ValueError(
                f"`dataset` must be one of {', '.join(DATASETS)}, but got {dataset!r}"
            )
        return Recipe(method=MSA_RECIPES[dataset], run=MSA_RUNS[dataset])

    @property
    def needs(self) -> MethodNeeds:
        """An EMA teacher with ``config.ema_momentum`` (constant), ``ema_buffers`` and
        ``ema_batchnorm``."""
        spec = EMASpec(
            momentum=self.config.ema_momentum,
            schedule="constant",
            buffers=self.config.ema_buffers,
            batchnorm=self.config.ema_batchnorm,
        )
        # The cross-level term compares every pair of the batch: it needs the global batch.
        return MethodNeeds(teacher=spec, whole_batch=True)

    def teacher_output(self, features: Tensor) -> Tensor:
        """The L2-normalised ``fc_aux`` output ``[batch, embedding_dim]`` (on the teacher)."""
        return F.normalize(self.heads.fc_aux(features), dim=1)

    def training_step(self, batch: StepInput) -> StepOutput:
        """The MSA loss; the logs are its weighted parts (``loss/cross_level`` times alpha).

        Raises:
            ValueError: the batch carries no teacher output.
        """
        if batch.teacher_output is None:
            raise ValueError(
                "`teacher_output` must be the EMA teacher's normalised fc_aux output (the "
                "engine passes it when `method.needs.teacher` is set), but got None"
            )
        embeddings, aux_embeddings = self.heads(batch.features)
        total, parts = self.loss(embeddings, batch.labels, aux_embeddings, batch.teacher_output)
        return StepOutput(loss=total, logs=self._log_names(parts))

    def embed(self, features: Tensor) -> Tensor:
        """:func:`msa_eval_embedding` of ``fc``'s output: unit norm, mean per-level cosine."""
        embeddings, _ = self.heads(features)
        return msa_eval_embedding(embeddings, n_levels=self.heads.n_levels)

    def param_groups(self) -> list[ParamGroup]:
        """``"heads"`` (``fc``, ``fc_aux``) and ``"proxies"``, with their multipliers."""
        return heads_and_proxies(
            heads=self.heads,
            proxies=self.loss,
            head_lr_mult=self.config.head_lr_mult,
            proxy_lr_mult=self.config.proxy_lr_mult,
        )

    def _log_names(self, parts: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The official names of the loss's parts as log keys (``loss/cluster/fine``...)."""
        names = {
            "loss_cluster": "loss/cluster",
            "loss_cross_level": "loss/cross_level",
            "loss_instance_alignment": "loss/alignment",
            **{f"loss_cluster{i}": f"loss/cluster/{n}" for i, n in enumerate(self.level_names)},
        }
        return {names[name]: value for name, value in parts.items()}


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
