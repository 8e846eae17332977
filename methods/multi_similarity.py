"""Multi-Similarity baseline: PML's ``MultiSimilarityLoss`` on pairs its miner keeps.

Wang, Han, Huang, Dong and Scott, "Multi-Similarity Loss with General Pair Weighting for Deep
Metric Learning", CVPR 2019; a row of the DyML table (Sun et al., CVPR 2021). On cosine
similarities ``S`` of the fine label's pairs, per anchor:
``1/alpha log(1 + sum_pos exp(-alpha (S - base))) + 1/beta log(1 + sum_neg exp(beta (S - base)))``,
over the pairs PML's ``MultiSimilarityMiner(epsilon)`` keeps: negatives more similar than the
least similar positive minus epsilon, positives less similar than the most similar negative
plus epsilon (the paper's pair mining).

Recipe (the DyML paper gives no loss settings; these are PML's defaults, which are the values of
the official MS code):

- every dataset: ``alpha=2``, ``beta=50``, ``base=0.5``, ``epsilon=0.1``; head
  ``Linear(512, 512)`` without normalisation (the DyML code);
- head learning rate x1 on Vehicle, Animal and toy, x2 on Product;
- run: the one every classic baseline shares, stated in :mod:`methods._pml`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from dymlbench.config import bounded
from dymlbench.method import Recipe
from dymlbench.registry import register_method
from methods._pml import DYML_CITATION, PMLConfig, PMLMethod, make_recipe, per_dataset


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiSimilarityConfig(PMLConfig):
    """Settings of the Multi-Similarity baseline.

    Attributes:
        alpha: scale of the positive pairs' term.
        beta: scale of the negative pairs' term.
        base: the similarity both terms are measured from (the paper's lambda).
        epsilon: the miner's margin.
    """

    alpha: float = bounded(2.0, gt=0.0)
    beta: float = bounded(50.0, gt=0.0)
    base: float = bounded(0.5, ge=-1.0, le=1.0)
    epsilon: float = bounded(0.1, ge=0.0)


RECIPES: Mapping[str, MultiSimilarityConfig] = per_dataset(MultiSimilarityConfig())
"""The Multi-Similarity baseline's config per dataset (module docstring)."""


@register_method("multi-similarity")
class MultiSimilarity(PMLMethod):
    """Multi-Similarity loss on the mined pairs of the fine label."""

    citation = (
        "X. Wang, X. Han, W. Huang, D. Dong and M. R. Scott. Multi-Similarity Loss with General "
        f"Pair Weighting for Deep Metric Learning. CVPR 2019. {DYML_CITATION}"
    )
    config_type = MultiSimilarityConfig

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring."""
        return make_recipe(RECIPES, dataset)

    def build_loss(self) -> nn.Module:
        """PML's ``MultiSimilarityLoss(alpha, beta, base)``."""
        from pytorch_metric_learning.losses import MultiSimilarityLoss

        config = self.config
        return MultiSimilarityLoss(alpha=config.alpha, beta=config.beta, base=config.base)

    def build_miner(self) -> nn.Module:
        """PML's ``MultiSimilarityMiner(epsilon)``."""
        from pytorch_metric_learning.miners import MultiSimilarityMiner

        return MultiSimilarityMiner(epsilon=self.config.epsilon)
