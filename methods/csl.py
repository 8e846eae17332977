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

The registered method ``csl`` (:class:`CSL`) is CSL as the HAPPIER code trains it:

- head: :class:`methods.happier.HAPPIERHead` (the HAPPIER code's ``RetrievalNet`` with
  ``norm_features: True``): LayerNorm without affine on the pooled feature, a linear layer, and
  L2 normalisation in training too, which the loss relies on;
- loss: :class:`CSLLoss` with one proxy per fine class, each carrying its fine, middle and coarse
  labels, taken from the training hierarchy (:meth:`dymlbench.hierarchy.Hierarchy.ancestors`);
  margins 0.25 / 0.35 / 0.45, scale 32, the levels summed (``csl.yaml``);
- parameter groups: ``"heads"`` and ``"proxies"``, with their multipliers.

Recipes: the loss settings above on every dataset, and the run of the HAPPIER code's DyML
configs, the same as HAPPIER's (:func:`methods.happier.happier_run`):

- Vehicle and Animal: ResNet-34 from scratch, 512-d, batches of 64 fine classes x 4 images, SGD
  Nesterov 0.9, lr 0.1 for the backbone, head and proxies, weight decay 1e-4, 100 epochs, cosine
  per epoch to 1e-6 (``dyml.yaml``, ``dyml_resnet34.yaml``);
- Product: torchvision's ImageNet weights (``resnet34.tv_in1k``), batch-norm frozen
  (``dyml_resnet34_product.yaml``); SGD
  Nesterov 0.9, backbone lr 0.01, head x2 (``dyml_product.yaml``), proxies x1 (``csl_product.yaml``
  gives the loss the backbone's optimiser settings, ``optimizer.opt.0``), weight decay 1e-4,
  20 epochs, cosine to 1e-5, the backbone not stepped for the first 5 epochs (the README's
  Product command for HAPPIER; the code ships no CSL command, so the same run is assumed);
- toy: the classic baselines' toy run (``test_resnet``, 64-d, 16 x 4, Adam lr 1e-3, 2 epochs).

The MSA code holds another Product optimiser for CSL (``dyml_product_csl.yaml``: backbone lr
1e-3, head x2); it is ``--set optim.lr=0.001``. These recipes correspond to the "CSL (rerun by
HAPPIER)" row of the published table, not to the DyML paper's own training (a ``Linear(512,
512)`` head without LayerNorm, max pooling, no published optimiser settings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymlbench.config import DATASETS, ConfigError, MethodConfig, bounded
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import (
    Recipe,
    StepInput,
    StepOutput,
)
from dymlbench.registry import register_method
from methods.happier import HAPPIERHead, HeadAndProxies, happier_run


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


@dataclass(frozen=True, kw_only=True)
class CSLConfig(MethodConfig):
    """The ``method`` section of a CSL run; the defaults are the Vehicle recipe.

    Attributes:
        margins: margin of each level, fine first (one per level of the training hierarchy).
        scale: scale of the cosine similarities.
        proxies_seed: seed of the proxies' initialisation (0 in the official configs, whatever
            the run's seed), or ``None`` to draw them from the run's global generator.
        head_lr_mult: learning-rate multiplier of the group ``"heads"``.
        proxy_lr_mult: learning-rate multiplier of the group ``"proxies"``.
    """

    margins: tuple[float, ...] = (0.25, 0.35, 0.45)
    scale: float = bounded(32.0, gt=0.0)
    proxies_seed: int | None = bounded(0, ge=0)
    head_lr_mult: float = bounded(1.0, gt=0.0)
    proxy_lr_mult: float = bounded(1.0, gt=0.0)

    def validate(self) -> None:
        """Check that there is a margin per level."""
        if not self.margins:
            raise ConfigError("margins", "must hold one margin per level, but got []")

    def loss_config(self) -> CSLLossConfig:
        """The loss recipe this config holds."""
        return CSLLossConfig(margins=self.margins, scale=self.scale)


PRODUCT_HEAD_LR_MULT = 2.0
"""Learning-rate multiplier of the head on Product (``dyml_product.yaml``); the proxies stay x1."""

CSL_RECIPES: Mapping[str, CSLConfig] = MappingProxyType(
    {
        dataset: CSLConfig(
            margins=CSL_LOSS_RECIPES[dataset].margins,
            scale=CSL_LOSS_RECIPES[dataset].scale,
            head_lr_mult=PRODUCT_HEAD_LR_MULT if dataset == "product" else 1.0,
        )
        for dataset in DATASETS
    }
)
"""The ``method`` section of each recipe (module docstring)."""


@register_method("csl")
class CSL(HeadAndProxies):
    """CSL: per-level margins against one proxy per fine class that carries its coarser labels.

    Args:
        config: a :class:`CSLConfig`.
        feature_dim: size of the backbone's pooled features.
        embedding_dim: size of the embedding (512 in the recipes).
        hierarchy: the training hierarchy; its fine classes, with their ancestors, are the
            proxies' label table.

    Example:
        >>> import numpy as np
        >>> hierarchy = Hierarchy.from_labels(np.array([[0, 0, 0], [1, 0, 0], [2, 1, 0]]))
        >>> method = CSL(
        ...     config=CSL_RECIPES["toy"], feature_dim=8, embedding_dim=4, hierarchy=hierarchy
        ... )
        >>> method.loss.proxy_labels.tolist()
        [[0, 0, 0], [1, 0, 0], [2, 1, 0]]
    """

    citation = (
        "Y. Sun, Y. Zhu, Y. Zhang, P. Zheng, X. Qiu, C. Zhang and Y. Wei. Dynamic Metric "
        "Learning: Towards a Scalable Metric Space to Accommodate Multiple Semantic Scales. "
        "CVPR 2021 (as implemented by E. Ramzi et al., Hierarchical Average Precision Training "
        "for Pertinent Image Retrieval, ECCV 2022)."
    )
    config_type = CSLConfig

    def __init__(
        self,
        *,
        config: CSLConfig,
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
        if len(config.margins) != self.n_levels:
            raise ValueError(
                f"`method.margins` must hold one margin per level of the training hierarchy "
                f"({self.n_levels}), but got {list(config.margins)}; "
                "set it with --set method.margins=[...]"
            )
        self.level_names = hierarchy.level_names
        self.head = HAPPIERHead(feature_dim=feature_dim, embedding_dim=embedding_dim)
        self.loss = CSLLoss(
            label_table=torch.from_numpy(hierarchy.ancestors(0)),
            embedding_dim=embedding_dim,
            config=config.loss_config(),
            proxies_seed=config.proxies_seed,
        )

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring for ``dataset``."""
        run = happier_run(dataset)
        return Recipe(method=CSL_RECIPES[dataset], run=run)

    def training_step(self, batch: StepInput) -> StepOutput:
        """The loss summed over levels; the logs are the per-level terms ``loss/<level>``."""
        total, parts = self.loss(self.head(batch.features), batch.labels)
        logs = {
            f"loss/{name}": parts[f"loss_level{level}"]
            for level, name in enumerate(self.level_names)
        }
        return StepOutput(loss=total, logs=logs)
