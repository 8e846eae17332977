"""CosFace baseline: PML's ``CosFaceLoss``, one class weight per fine class of the training set.

Wang, Wang, Zhou, Ji, Gong, Zhou, Li and Liu, "CosFace: Large Margin Cosine Loss for Deep Face
Recognition", CVPR 2018; a row of the DyML table (Sun et al., CVPR 2021). The cross-entropy of
``scale * (cos(x, w_c) - margin * [c == y])`` over the fine classes ``c``, ``w`` the class
weights (PML stores them as ``W`` ``[embedding_dim, n_fine_classes]``, initialised from a
standard normal), normalised in the loss.

The class weights are in the parameter group ``"proxies"`` with ``method.proxy_lr_mult``; the
loss compares each embedding with the weights only, so a batch gathered across ranks is passed
as it is.

Recipe (the DyML paper gives no loss settings; these are PML's defaults, which are the CosFace
paper's values):

- every dataset: ``margin=0.35``, ``scale=64`` (toy: ``scale=16``, since 64 suits thousands of
  classes and keeps the toy's few dozen from learning in two epochs: 30.0 against 34.9 overall
  mAP, untrained 25.7); head ``Linear(512, 512)`` without normalisation (the DyML code);
- head learning rate x1 on Vehicle, Animal and toy, x2 on Product; class weights x1 everywhere
  (the HAPPIER code steps CSL's proxies with the backbone's optimiser);
- run: the one every classic baseline shares, stated in :mod:`methods._pml`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from dymlbench.config import bounded
from dymlbench.method import Recipe
from dymlbench.registry import register_method
from methods._pml import DYML_CITATION, ProxyPMLConfig, ProxyPMLMethod, make_recipe, per_dataset


@dataclasses.dataclass(frozen=True, kw_only=True)
class CosFaceConfig(ProxyPMLConfig):
    """Settings of the CosFace baseline.

    Attributes:
        margin: cosine margin subtracted from the target class.
        scale: scale of the cosines before the softmax.
    """

    margin: float = bounded(0.35, ge=0.0, lt=1.0)
    scale: float = bounded(64.0, gt=0.0)


RECIPES: Mapping[str, CosFaceConfig] = MappingProxyType(
    {
        dataset: dataclasses.replace(config, scale=16.0) if dataset == "toy" else config
        for dataset, config in per_dataset(CosFaceConfig()).items()
    }
)
"""The CosFace baseline's config per dataset (module docstring)."""


@register_method("cosface")
class CosFace(ProxyPMLMethod):
    """Large-margin cosine loss against one class weight per fine class."""

    citation = (
        "H. Wang, Y. Wang, Z. Zhou, X. Ji, D. Gong, J. Zhou, Z. Li and W. Liu. CosFace: Large "
        f"Margin Cosine Loss for Deep Face Recognition. CVPR 2018. {DYML_CITATION}"
    )
    config_type = CosFaceConfig

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        """The recipe of the module docstring."""
        return make_recipe(RECIPES, dataset)

    def build_loss(self) -> nn.Module:
        """PML's ``CosFaceLoss(n_fine_classes, embedding_dim, margin, scale)``."""
        from pytorch_metric_learning.losses import CosFaceLoss

        return CosFaceLoss(
            num_classes=self.n_classes[0],
            embedding_size=self.embedding_dim,
            margin=self.config.margin,
            scale=self.config.scale,
        )
