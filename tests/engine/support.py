"""Helpers of the engine tests: the throwaway methods, a registry holding them, a small toy.

Loaded by file path in ``tests/conftest.py``, as the module ``engine_support``, for every test
folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from dymlbench.data import ToyConfig, generate_toy_dataset

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "launch.py"

SMALL_TOY = ToyConfig(
    image_size=32,
    n_coarse=3,
    middle_per_coarse=2,
    train_fine_per_middle=4,
    test_fine_per_middle=2,
    train_images_per_class=6,
    test_images_per_class=5,
    queries_per_class=2,
)
"""A toy dataset of 24 train fine classes (144 images) and 12 test classes, at 32 px."""


def engine_methods() -> ModuleType:
    """The module of the throwaway methods, imported once under the name ``engine_methods``."""
    if "engine_methods" not in sys.modules:
        spec = importlib.util.spec_from_file_location("engine_methods", HERE / "engine_methods.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["engine_methods"] = module
        spec.loader.exec_module(module)
    return sys.modules["engine_methods"]


def registry_with_throwaway_methods():
    """A fresh registry holding every registered method plus the throwaway ones."""
    from dymlbench.registry import MethodRegistry, get_method, list_methods

    fresh = MethodRegistry(package=None, entry_point_group=None)
    for key in list_methods():
        fresh.register(key)(get_method(key))
    engine_methods().register(fresh)
    return fresh


def make_small_toy(root: Path, *, layout: str = "vehicle") -> Path:
    """Generate :data:`SMALL_TOY` (in ``layout``) into ``root``."""
    config = ToyConfig(**{**SMALL_TOY.__dict__, "layout": layout})
    return generate_toy_dataset(root, seed=0, config=config)


def tiny_overrides(data_dir: Path, **extra: object) -> list[str]:
    """``--set`` strings that make any method's toy recipe a run of seconds on ``data_dir``."""
    values = {
        "data.data_dir": str(data_dir),
        "data.image_size": 32,
        "data.val_fraction": 0.0,
        "model.backbone": "test_resnet",
        "model.pretrained": "scratch",
        "model.channels_last": False,
        "optim.epochs": 2,
        "optim.freeze_epochs": 0,
        "optim.classes_per_batch": 4,
        "optim.images_per_class": 4,
        "optim.amp": "off",
        "engine.device": "cpu",
        "engine.num_workers": 0,
        "engine.progress": False,
        "engine.eval_every": 0,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]
