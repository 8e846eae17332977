"""N-pair baseline: PML's ``NPairsLoss`` on the fine label.

Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016; a row
of the DyML table (Sun et al., CVPR 2021). For N classes, one anchor-positive pair each, the loss
is the cross-entropy of every anchor against the N positives, its own being the target.

With 4 images per class: PML forms one pair per class, the first anchor and its first positive
in the batch, so 2 of the 4 images of each class (128 of a 256-image batch) enter the loss and
the other two are not used. The loss works at any number of images per class >= 2; a class
with a single image in the batch drops out.

Recipe (the DyML paper gives no loss settings; these are PML's defaults):

- every dataset: PML's default similarity, the dot product of L2-normalised embeddings
  (``DotProductSimilarity(normalize_embeddings=True)``), no temperature and no embedding
  regulariser. Deviation: Sohn uses the dot product of unnormalised embeddings with an L2
  penalty on them. Head ``Linear(512, 512)`` without normalisation (the DyML code);
- head learning rate x1 on Vehicle, Animal and toy, x2 on Product;
- run: the one every classic baseline shares, stated in :mod:`methods._pml`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from dymlbench.method import Recipe
from dymlbench.registry import register_method
from methods._pml import DYML_CITATION, PMLConfig, PMLMethod, make_recipe, per_dataset


@dataclasses.dataclass(frozen=True, kw_only=True)
class NPairConfig(PMLConfig):
    """Settings of the N-pair baseline: the head's only (the loss has no hyperparameters)."""


RECIPES: Mapping[str, NPairConfig] = per_dataset(NPairConfig())
"""The N-pair baseline's config per dataset (module docstring)."""


@register_method("npair")
class NPair(PMLMethod):
    """Multi-class N-pair loss on one pair per fine class of the batch."""

    citation = (
        "K. Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. "
        f"NeurIPS 2016. {DYML_CITATION}"
    )
    config_type = NPairConfig

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring."""
        return make_recipe(RECIPES, dataset)

    def build_loss(self) -> nn.Module:
        """PML's ``NPairsLoss()``."""
        from pytorch_metric_learning.losses import NPairsLoss

        return NPairsLoss()
