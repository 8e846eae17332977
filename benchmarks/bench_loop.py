"""Loop overhead: the engine's training epoch against a minimal hand-written PyTorch loop.

Both train the same tiny network (timm ``test_resnet`` at 32 px, a linear head and a
normalised-softmax proxy loss, Adam) on the same generated toy images, batches from the same
M-per-class sampler, decoded and augmented in the main process (``num_workers=0``), on CPU:

- minimal: ``DataLoader`` -> normalise -> forward -> loss -> ``zero_grad`` / ``backward`` /
  ``step``, and ``loss.item()`` for the log line every loop prints;
- engine: :meth:`dymlbench.engine.Trainer.train_epoch` with everything it adds: per-item
  augmentation seeds, the schedule, the logged values gathered and checked for NaN, the
  TensorBoard scalars of every step, the EMA-free method hooks.

Rounds alternate and the median round counts, so a busy machine disturbs both alike. Goal: the
engine within 10% of the minimal loop. Run: ``python benchmarks/bench_loop.py [--rounds R]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dymlbench import registry
from dymlbench.config import MethodConfig, resolve_config
from dymlbench.data import (
    BatchNormalize,
    MPerClassBatchSampler,
    ToyConfig,
    collate_batch,
    generate_toy_dataset,
    image_dataset,
    load_dataset,
)
from dymlbench.engine import Trainer
from dymlbench.engine.distributed import DistContext
from dymlbench.engine.logs import RunLogger
from dymlbench.method import Method, Recipe, StepInput, StepOutput
from dymlbench.models import create_backbone, feature_dim

RUN = {
    "model.backbone": "test_resnet",
    "model.pretrained": "scratch",
    "model.embedding_dim": 64,
    "data.image_size": 32,
    "optim.optimizer": "adam",
    "optim.lr": 1e-3,
    "optim.epochs": 100,
    "optim.classes_per_batch": 8,
    "optim.images_per_class": 4,
    "optim.amp": "off",
    "engine.device": "cpu",
    "engine.num_workers": 0,
    "engine.progress": False,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig(MethodConfig):
    temperature: float = 0.1


class BenchProxy(Method):
    """Normalised-softmax proxies on the fine label (the work both loops do)."""

    citation = "dymlbench loop benchmark."
    config_type = BenchConfig

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.feature_dim, self.embedding_dim)
        self.proxies = nn.Parameter(torch.randn(self.n_classes[0], self.embedding_dim))

    @classmethod
    def recipe(cls, dataset: str) -> Recipe:
        return Recipe(method=BenchConfig(), run=RUN)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = F.normalize(self.head(features), dim=1)
        logits = embeddings @ F.normalize(self.proxies, dim=1).T / self.config.temperature
        return F.cross_entropy(logits, labels[:, 0])

    def training_step(self, batch: StepInput) -> StepOutput:
        return StepOutput(loss=self.loss(batch.features, batch.labels))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)


def minimal_epoch(backbone, method, optimizer, loader, normalize) -> int:
    """One epoch of the hand-written loop; returns the images seen."""
    backbone.train()
    n_images = 0
    for batch in loader:
        images = normalize(batch["images"])
        loss = method.loss(backbone(images), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        n_images += len(images)
    return n_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry.METHODS.register("bench-proxy")(BenchProxy)

    with tempfile.TemporaryDirectory() as folder:
        root = generate_toy_dataset(
            Path(folder) / "toy",
            config=ToyConfig(image_size=32, train_images_per_class=8, test_images_per_class=3),
        )
        config = resolve_config(
            method="bench-proxy", dataset="toy", overrides=[f"data.data_dir={root}"]
        )
        dataset = load_dataset(config.data)
        with RunLogger(run_dir=Path(folder) / "run", progress=False) as run_logger:
            trainer = Trainer(
                config=config,
                dataset=dataset,
                device=torch.device("cpu"),
                context=DistContext(),
                run_logger=run_logger,
            )

            torch.manual_seed(0)
            backbone = create_backbone(name="test_resnet")
            method = BenchProxy(
                config=BenchConfig(),
                feature_dim=feature_dim(backbone),
                embedding_dim=64,
                hierarchy=dataset.train.hierarchy,
            )
            optimizer = torch.optim.Adam(
                [*backbone.parameters(), *method.parameters()], lr=1e-3, weight_decay=1e-4
            )
            sampler = MPerClassBatchSampler(
                dataset.train.labels, classes_per_batch=8, samples_per_class=4, seed=0
            )
            loader = DataLoader(
                image_dataset(dataset.train, config.data, train=True),
                batch_sampler=sampler,
                collate_fn=collate_batch,
            )
            normalize = BatchNormalize()

            trainer.train_epoch()  # warm-up of both
            minimal_epoch(backbone, method, optimizer, loader, normalize)
            rates: dict[str, list[float]] = {"minimal": [], "engine": []}
            for round_index in range(args.rounds):
                start = time.perf_counter()
                sampler.set_epoch(round_index + 1)
                n_images = minimal_epoch(backbone, method, optimizer, loader, normalize)
                rates["minimal"].append(n_images / (time.perf_counter() - start))
                start = time.perf_counter()
                trainer.train_epoch()
                n_images = trainer.steps_per_epoch * config.optim.batch_size
                rates["engine"].append(n_images / (time.perf_counter() - start))

    minimal, engine = (statistics.median(rates[name]) for name in ("minimal", "engine"))
    print(f"train images/s, median of {args.rounds} epochs, {args.threads} threads:")
    print(f"  minimal loop {minimal:8.1f}")
    print(f"  engine       {engine:8.1f}   ratio engine/minimal {engine / minimal:.3f}")


if __name__ == "__main__":
    main()
