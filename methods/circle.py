"""Circle baseline: PML's ``CircleLoss`` on every pair of the fine label in the batch.

Sun, Cheng, Zhang, Zhang, Zheng, Wang and Wei, "Circle Loss: A Unified Perspective of Pair
Similarity Optimization", CVPR 2020; a row of the DyML table (Sun et al., CVPR 2021). On cosine
similarities, per anchor: ``softplus(LSE_neg(gamma a_n (s_n - m)) + LSE_pos(-gamma a_p (s_p -
1 + m)))`` with the self-paced weights ``a_p = relu(1 + m - s_p)``, ``a_n = relu(s_n + m)``
(detached), averaged over the anchors with a non-zero loss.

Recipe (the DyML paper gives no loss settings; these are PML's defaults, the Circle paper's
values for fine-grained image retrieval):

- every dataset: ``m=0.4``, ``gamma=80``, no miner (every pair); head ``Linear(512, 512)``
  without normalisation (the DyML code);
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
class CircleConfig(PMLConfig):
    """Settings of the Circle baseline.

    Attributes:
        m: the relaxation margin.
        gamma: the scale of the similarities.
    """

    m: float = bounded(0.4, ge=0.0, lt=1.0)
    gamma: float = bounded(80.0, gt=0.0)


RECIPES: Mapping[str, CircleConfig] = per_dataset(CircleConfig())
"""The Circle baseline's config per dataset (module docstring)."""


@register_method("circle")
class Circle(PMLMethod):
    """Circle loss on every pair of the fine label in the batch."""

    citation = (
        "Y. Sun, C. Cheng, Y. Zhang, C. Zhang, L. Zheng, Z. Wang and Y. Wei. Circle Loss: A "
        f"Unified Perspective of Pair Similarity Optimization. CVPR 2020. {DYML_CITATION}"
    )
    config_type = CircleConfig

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring."""
        return make_recipe(RECIPES, dataset)

    def build_loss(self) -> nn.Module:
        """PML's ``CircleLoss(m, gamma)``."""
        from pytorch_metric_learning.losses import CircleLoss

        return CircleLoss(m=self.config.m, gamma=self.config.gamma)
