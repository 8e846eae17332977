"""Load backbone weights from a local checkpoint file.

Three kinds of file are recognised (:attr:`LoadReport.kind`):

- ``"state_dict"``: a plain mapping from parameter names to tensors (``torch.save(
  model.state_dict())``, or a ``.safetensors`` file such as timm's hub weights);
- ``"timm"``: a training checkpoint with the state dict under ``"state_dict"`` or ``"model"``;
- ``"dino"``: a DINO self-distillation checkpoint (Caron et al., ICCV 2021), as shipped with MSA:
  ``"student"`` and ``"teacher"`` state dicts whose backbone keys start with
  ``module.backbone.``; the projection head (``module.head.``) is ignored. ``which`` picks the
  network: MSA starts its online network from the student and its EMA teacher from the teacher.

Key prefixes left by wrappers (``module.``, ``_orig_mod.``) are removed, and when the file holds
``backbone.``-prefixed keys but the model has none, only those keys are used, without the prefix.
Every file is read with ``torch.load(..., weights_only=True)``; ``argparse.Namespace`` (the
``args`` entry of a DINO checkpoint) is the only class allowed besides tensors and containers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dymlbench.models.wrappers import unwrap_model

logger = logging.getLogger(__name__)

CheckpointKind = Literal["state_dict", "timm", "dino"]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BACKBONE_PREFIX = "backbone."
_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path: the checkpoint file.
        kind: ``"state_dict"``, ``"timm"`` or ``"dino"``.
        network: ``"student"`` or ``"teacher"`` for a DINO file, else ``None``.
        n_loaded: number of tensors copied into the model.
        missing: model keys the file did not provide (``num_batches_tracked`` not counted).
        unexpected: file keys (after removing prefixes) the model does not have.
        n_ignored: keys outside the backbone (a DINO projection head), skipped on purpose.
    """

    path: Path
    kind: CheckpointKind
    network: str | None
    n_loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    n_ignored: int = 0

    def __str__(self) -> str:
        network = f" ({self.network})" if self.network else ""
        return (
            f"loaded {self.n_loaded} tensors from {self.kind} checkpoint {self.path}{network}; "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{self.n_ignored} ignored"
        )


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    which: Literal["student", "teacher"] = "student",
    strict: bool = True,
) -> LoadReport:
    """Copy the weights of a local checkpoint file into ``model``.

    Args:
        model: the module to load into, usually a backbone from
            :func:`dymlbench.models.create_backbone` (DDP wrappers are unwrapped).
        path: a ``.pth``/``.pt``/``.bin`` file read with ``weights_only=True``, or a
            ``.safetensors`` file.
        which: the network to take from a DINO checkpoint; ignored for files that hold one.
        strict: raise when the file misses some of the model's keys; otherwise log a warning.

    Returns:
        A :class:`LoadReport`; missing and unexpected keys are also logged.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read safely, holds no state dict, has no ``which``
            network, matches none of the model's keys, has tensors of other shapes, or (with
            ``strict``) misses some of the model's keys.
    """
    if which not in ("student", "teacher"):
        raise ValueError(f"`which` must be 'student' or 'teacher', but got {which!r}")
    path = Path(path)
    model = unwrap_model(model)
    state, kind, network = _read_state_dict(path, which)

    state = {_strip_wrappers(key): value for key, value in state.items()}
    expected = model.state_dict()
    n_ignored = 0
    has_backbone_keys = any(key.startswith(_BACKBONE_PREFIX) for key in state)
    if has_backbone_keys and not any(key.startswith(_BACKBONE_PREFIX) for key in expected):
        backbone = {
            key[len(_BACKBONE_PREFIX) :]: value
            for key, value in state.items()
            if key.startswith(_BACKBONE_PREFIX)
        }
        n_ignored = len(state) - len(backbone)
        state = backbone

    matched = {key: value for key, value in state.items() if key in expected}
    if not matched:
        raise ValueError(
            f"checkpoint {str(path)!r} ({kind}) must hold weights for this "
            f"{type(model).__name__}, but none of its keys matches: it has "
            f"{_sample(state)}, the model expects {_sample(expected)}. Expected a state dict "
            "of the same timm architecture, optionally under 'state_dict' or 'model', or a DINO "
            "checkpoint with 'student'/'teacher' keys prefixed 'module.backbone.'"
        )
    wrong_shapes = [
        f"{key}: file {list(value.shape)} vs model {list(expected[key].shape)}"
        for key, value in matched.items()
        if value.shape != expected[key].shape
    ]
    if wrong_shapes:
        raise ValueError(
            f"checkpoint {str(path)!r} must match the model's tensor shapes, but "
            f"{len(wrong_shapes)} differ (is it another architecture or width?): "
            + "; ".join(wrong_shapes[:_SHOWN])
        )
    missing = tuple(
        key for key in expected if key not in matched and not key.endswith("num_batches_tracked")
    )
    unexpected = tuple(key for key in state if key not in expected)
    if missing and strict:
        raise ValueError(
            f"checkpoint {str(path)!r} must provide every weight of the model, but "
            f"{len(missing)} are missing: {', '.join(missing[:_SHOWN])}"
            f"{', ...' if len(missing) > _SHOWN else ''}; pass strict=False to load it anyway"
        )

    model.load_state_dict(matched, strict=False)
    report = LoadReport(
        path=path,
        kind=kind,
        network=network,
        n_loaded=len(matched),
        missing=missing,
        unexpected=unexpected,
        n_ignored=n_ignored,
    )
    logger.info("%s", report)
    if missing:
        logger.warning("keys missing from %s (left as initialised): %s", path, _names(missing))
    if unexpected:
        logger.warning("keys in %s that the model does not have: %s", path, _names(unexpected))
    return report


def _read_state_dict(
    path: Path, which: str
) -> tuple[dict[str, torch.Tensor], CheckpointKind, str | None]:
    """Read ``path`` and pick the state dict in it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; `model.pretrained` must be 'scratch', "
            "'imagenet' or the path of a local checkpoint file"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), "state_dict", None

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"checkpoint {str(path)!r} must be readable with torch.load(weights_only=True), but "
            f"it is not ({_unpickling_reason(error)}); if it holds objects other than tensors, "
            "re-save only its state dict where you trust the file, e.g. "
            "torch.save(checkpoint['state_dict'], path)"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(
            f"checkpoint {str(path)!r} must be a file written by torch.save, but reading it "
            f"failed: {error}"
        ) from None

    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"checkpoint {str(path)!r} must hold a mapping (a state dict or a dict containing "
            f"one), but got a {type(checkpoint).__name__}"
        )
    networks = [key for key in ("student", "teacher") if isinstance(checkpoint.get(key), Mapping)]
    if networks:
        if which not in networks:
            raise ValueError(
                f"`which` must name a network of the DINO checkpoint {str(path)!r}, but got "
                f"{which!r}; it holds {' and '.join(networks)}"
            )
        return _tensors(checkpoint[which], path, which), "dino", which
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            return _tensors(checkpoint[key], path, key), "timm", None
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint), "state_dict", None
    raise ValueError(
        f"checkpoint {str(path)!r} must hold a state dict (names to tensors), or one under "
        "'state_dict', 'model' or DINO's 'student'/'teacher', but it has "
        f"{_sample(checkpoint)}"
    )


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only error that says what was refused."""
    message = str(error)
    detail = message.partition("WeightsUnpickler error:")[2] or message
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _tensors(state: Mapping[str, Any], path: Path, entry: str) -> dict[str, torch.Tensor]:
    others = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise ValueError(
            f"checkpoint {str(path)!r} must hold only tensors under {entry!r}, but "
            f"{_names(others)} are not tensors"
        )
    return dict(state)


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _names(keys: Any) -> str:
    keys = list(keys)
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _sample(mapping: Mapping[str, Any]) -> str:
    keys = list(mapping)
    if not keys:
        return "no keys"
    shown = ", ".join(f"'{key}'" for key in keys[:3])
    return f"{len(keys)} keys like {shown}"
