"""Triplet baseline: PML's ``TripletMarginLoss`` on semi-hard triplets of the fine label.

Schroff, Kalenichenko and Philbin, "FaceNet", CVPR 2015 (the triplet loss after Weinberger and
Saul, NIPS 2005); a row of the DyML table (Sun et al., CVPR 2021). The loss is
``relu(d(a, p) - d(a, n) + margin)`` with ``d`` the Euclidean distance of L2-normalised
embeddings (PML's default ``LpDistance``), averaged over the triplets with a non-zero loss.

Mining: PML's ``TripletMarginMiner`` with ``type_of_triplets="semihard"`` and the loss's margin:
every in-batch triplet whose negative is farther than the positive but inside the margin.
Semi-hard negatives are FaceNet's choice, which reports that the hardest negatives make
training collapse early on; batch-hard mining is ``method.mining=hard``. Deviation: FaceNet
keeps one negative per anchor-positive pair and squares the distances; PML keeps every
semi-hard triplet and does not square.

Recipe (the DyML paper gives no loss settings, so these are PML's and FaceNet's):

- every dataset: ``margin=0.2`` for the loss and the miner (FaceNet's alpha and PML's miner
  default; PML's loss default is 0.05, which a miner at 0.2 would leave mostly at zero loss),
  ``mining="semihard"``, head ``Linear(512, 512)`` without normalisation (the DyML code);
- head learning rate x1 on Vehicle, Animal and toy, x2 on Product;
- run: the one every classic baseline shares, stated in :mod:`methods._pml`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from torch import nn

from dymlbench.config import bounded
from dymlbench.method import Recipe
from dymlbench.registry import register_method
from methods._pml import DYML_CITATION, PMLConfig, PMLMethod, make_recipe, per_dataset


@dataclasses.dataclass(frozen=True, kw_only=True)
class TripletConfig(PMLConfig):
    """Settings of the triplet baseline.

    Attributes:
        margin: margin of the loss and of the miner, on unit-sphere Euclidean distances.
        mining: PML's ``type_of_triplets``: ``"semihard"``, ``"hard"`` (negative closer than
            the positive) or ``"all"`` (every triplet inside the margin).
    """

    margin: float = bounded(0.2, gt=0.0)
    mining: Literal["semihard", "hard", "all"] = "semihard"


RECIPES: Mapping[str, TripletConfig] = per_dataset(TripletConfig())
"""The triplet baseline's config per dataset (module docstring)."""


@register_method("triplet")
class Triplet(PMLMethod):
    """Triplet margin loss on mined triplets of the fine label."""

    citation = (
        "F. Schroff, D. Kalenichenko and J. Philbin. FaceNet: A Unified Embedding for Face "
        "Recognition and Clustering. CVPR 2015 (triplet loss after K. Q. Weinberger and L. K. "
        "Saul, Distance Metric Learning for Large Margin Nearest Neighbor Classification, "
        f"NIPS 2005). {DYML_CITATION}"
    )
    config_type = TripletConfig

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring."""
        return make_recipe(RECIPES, dataset)

    def build_loss(self) -> nn.Module:
        """PML's ``TripletMarginLoss(margin)``."""
        from pytorch_metric_learning.losses import TripletMarginLoss

        return TripletMarginLoss(margin=self.config.margin)

    def build_miner(self) -> nn.Module:
        """PML's ``TripletMarginMiner(margin, type_of_triplets=mining)``."""
        from pytorch_metric_learning.miners import TripletMarginMiner

        return TripletMarginMiner(margin=self.config.margin, type_of_triplets=self.config.mining)
