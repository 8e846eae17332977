"""Model pieces: timm backbones, weight loading from local files, and the EMA teacher.

- :func:`create_backbone` and :func:`feature_dim`: a timm model without its classifier, ending in
  global average pooling, mapping images ``[batch, 3, H, W]`` to features ``[batch, dim]``;
- :func:`load_weights`: a plain state dict, a timm checkpoint or a DINO checkpoint (student or
  teacher) into a model, with a :class:`LoadReport`;
- :class:`EMATeacher` and :class:`EMASpec`: a momentum copy of a whole network;
- :func:`unwrap_model`: the module inside DDP / ``torch.compile`` wrappers.
"""

from __future__ import annotations

from dymlbench.models.backbone import DEFAULT_BACKBONE, create_backbone, feature_dim
from dymlbench.models.ema import EMASpec, EMATeacher
from dymlbench.models.weights import LoadReport, load_weights
from dymlbench.models.wrappers import unwrap_model

__all__ = [
    "DEFAULT_BACKBONE",
    "EMASpec",
    "EMATeacher",
    "LoadReport",
    "create_backbone",
    "feature_dim",
    "load_weights",
    "unwrap_model",
]
