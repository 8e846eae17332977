"""CSL: the cross-scale loss of the DyML paper, as the official HAPPIER code implements it.

Sun, Zhu, Zhang, Zheng, Qiu, Zhang and Wei, "Dynamic Metric Learning: Towards a Scalable Metric
Space to Accommodate Multiple Semantic Scales", CVPR 2021; reproduced number for number from the
``CSLLoss`` of the HAPPIER code (github.com/elias-ramzi/HAPPIER), which is how both the HAPPIER
and the MSA papers rerun it.

Vocabulary: ``embeddings`` is ``[n, dim]``, L2-normalised by the network (the loss does not
normalise them again, as in the official code); ``labels`` is ``[n, n_levels]`` with column 0
the finest level; a *label table* holds one row of labels per training item or class; a
*recipe* is a method's per-dataset hyperparameters. The loss expects float32 inputs and is meant
to run outside autocast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class CSLLossConfig:
    """Hyperparameters of the CSL loss (a recipe).

    Attributes:
        margins: margin of each level, fine first.
        scale: scale of the cosine similarities.
    """

    margins: tuple[float, ...] = (0.25, 0.35, 0.45)
    scale: float = 32.0

    def __post_init__(self) -> None:
        if not self.margins:
            raise ValueError(f"`margins` must hold one margin per level, but got {self.margins}")
        if self.scale <= 0:
            raise ValueError(f"`scale` must be positive, but got {self.scale}")


CSL_LOSS_RECIPES: Mapping[str, CSLLossConfig] = MappingProxyType(
    {dataset: CSLLossConfig() for dataset in ("vehicle", "animal", "product", "toy")}
)
"""CSL's settings per dataset: the official configs use the same ones everywhere."""


class CSLLoss(nn.Module):
    """Per-level margin loss against one proxy per fine class.

    Each proxy carries its fine class's labels at every level. For level ``l`` and a sample with
    similarities ``sim = x normalise(W)^T`` to the proxies,
    ``loss_l = mean softplus(LSE_{other_l}(s * sim) + LSE_{own}(-s * sim) + s * m_l)``, where
    ``other_l`` are the proxies whose level-``l`` label differs from the sample's and ``own`` is
    the sample's fine proxy: the fine-level positive term is reused at every level, as in the
    official code. The total is the sum over levels. A level where a sample has no other class
    (a single coarse class, say) contributes zero for that sample.

    Proxy ``p`` belongs to row ``p`` of the sorted unique rows of ``label_table``. Proxies start
    uniform in ``+-1 / sqrt(embedding_dim)``, drawn from their own generator seeded with
    ``proxies_seed`` (the official initialisation, without touching the global random state).

    Args:
        label_table: training labels, ``[m, n_levels]`` (one row per item or per class); each
            fine class must map to one class at every level.
        embedding_dim: embedding size.
        config: the loss recipe; one margin per label column.
        proxies_seed: seed of the proxy initialisation (0 in the official configs), or ``None``
            to draw from the global generator.

    Example:
        >>> table = torch.tensor([[0, 0], [1, 0], [2, 1]])
        >>> config = CSLLossConfig(margins=(0.25, 0.35))
        >>> loss = CSLLoss(label_table=table, embedding_dim=4, config=config)
        >>> embeddings = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
        >>> total, parts = loss(embeddings, table)
        >>> sorted(parts)
        ['loss_level0', 'loss_level1']
    """

    def __init__(
        self,
        *,
        label_table: Tensor,
        embedding_dim: int,
        config: CSLLossConfig,
        proxies_seed: int | None = 0,
    ) -> None:
        super().__init__()
        if label_table.ndim != 2 or label_table.shape[1] != len(config.margins):
            raise ValueError(
                f"`label_table` must be [m, {len(config.margins)}], one column per margin, "
                f"but got shape {tuple(label_table.shape)}"
            )
        proxy_labels = label_table.unique(dim=0)
        n_fine = len(proxy_labels[:, 0].unique())
        if len(proxy_labels) != n_fine:
            raise ValueError(
                "`label_table` must map every fine class to one class per level, but got "
                f"{len(proxy_labels)} distinct rows for {n_fine} fine classes"
            )
        self.margins = config.margins
        self.scale = config.scale
        self.register_buffer("proxy_labels", proxy_labels)

        generator = None if proxies_seed is None else torch.Generator().manual_seed(proxies_seed)
        bound = 1.0 / math.sqrt(embedding_dim)
        proxies = torch.empty(n_fine, embedding_dim).uniform_(-bound, bound, generator=generator)
        self.proxies = nn.Parameter(proxies)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            embeddings: ``[n, embedding_dim]``, L2-normalised.
            labels: ``[n, n_levels]``, column 0 the finest level; every fine label must be in
                the label table.

        Returns:
            The sum over levels and its detached per-level terms ``loss_level<l>``.
        """
        if labels.shape[1:] != self.proxy_labels.shape[1:]:
            raise ValueError(
                f"`labels` must be [n, {self.proxy_labels.shape[1]}], "
                f"but got shape {tuple(labels.shape)}"
            )
        logits = (embeddings @ F.normalize(self.proxies, dim=1).T) * self.scale

        own = labels[:, :1] == self.proxy_labels[:, 0]
        if not own.any(dim=1).all():
            raise ValueError("`labels` must only hold fine classes of the label table")
        positive = (-logits).masked_fill(~own, -math.inf).logsumexp(dim=1)

        per_level = []
        for level, margin in enumerate(self.margins):
            same = labels[:, level : level + 1] == self.proxy_labels[:, level]
            negative = logits.masked_fill(same, -math.inf).logsumexp(dim=1)
            per_level.append(F.softplus(negative + positive + margin * self.scale).mean())

        total = sum(per_level)
        return total, {f"loss_level{level}": loss.detach() for level, loss in enumerate(per_level)}
