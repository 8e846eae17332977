"""Embed a dataset's evaluation splits with a network and run the DyML evaluator on them.

- the validation split (held-out train classes, all levels): leave-one-out;
- the test data: per-level query/gallery benchmarks (Vehicle, Animal and the default toy
  layout), a query's own gallery entry excluded by item identity (same file content,
  :meth:`dymlbench.data.Benchmark.item_ids`); or one leave-one-out set (Product).

Images go through the test transform and the network's eval-time embedding
(:meth:`dymlbench.method.Network.embed`) in eval mode, without gradients; the backbone runs
under the network's autocast (bf16 on CUDA), the embeddings are cast to float32 and ranked in
float32 by the evaluator.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from dymlbench.config import DataConfig
from dymlbench.data import BatchNormalize, DyMLDataset, Split
from dymlbench.engine.batches import eval_loader
from dymlbench.evaluation import (
    Benchmark,
    EvaluationReport,
    evaluate_benchmarks,
    evaluate_leave_one_out,
)
from dymlbench.evaluation.protocol import Mode
from dymlbench.method import Network

logger = logging.getLogger(__name__)


@torch.no_grad()
def embed_split(
    network: Network,
    split: Split,
    data: DataConfig,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    channels_last: bool = False,
) -> np.ndarray:
    """The eval-time embeddings of every image of ``split``, in order.

    The network is put in eval mode and left there; the caller restores training mode.

    Returns:
        float32 ``[len(split), dim]``.
    """
    network.eval()
    normalize = BatchNormalize().to(device)
    pin_memory = device.type == "cuda"
    loader = eval_loader(
        split, data, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    chunks = []
    for batch in loader:
        images = normalize(batch["images"].to(device, non_blocking=True))
        images = images.contiguous(memory_format=memory_format)
        chunks.append(network.embed(images).float().cpu())
    return torch.cat(chunks).numpy()


def evaluate_validation(
    network: Network,
    split: Split,
    data: DataConfig,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    channels_last: bool = False,
) -> EvaluationReport:
    """Leave-one-out evaluation of the validation split at all its levels."""
    embeddings = embed_split(
        network,
        split,
        data,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        channels_last=channels_last,
    )
    return evaluate_leave_one_out(embeddings, split.labels, device=device)


def evaluate_test(
    network: Network,
    dataset: DyMLDataset,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    channels_last: bool = False,
    item_ids: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    mode: Mode = "default",
) -> EvaluationReport:
    """Evaluate the test data of ``dataset``: its benchmarks, or its leave-one-out test set.

    Args:
        network: the network to evaluate.
        dataset: the loaded dataset.
        device: where to embed and rank.
        batch_size: images per forward pass.
        num_workers: data-loading workers.
        channels_last: feed the images in the channels-last memory format.
        item_ids: per level, the benchmark's ``(query_ids, gallery_ids)`` when already
            computed (:func:`benchmark_item_ids`); computed here otherwise.
        mode: the evaluator's rules, ``"default"`` or ``"official"``.

    Returns:
        The report with the metric keys of DESIGN.md.
    """
    options = {
        "device": device,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "channels_last": channels_last,
    }
    if dataset.test is not None:
        embeddings = embed_split(network, dataset.test, dataset.spec, **options)
        return evaluate_leave_one_out(embeddings, dataset.test.labels, device=device, mode=mode)

    item_ids = item_ids if item_ids is not None else benchmark_item_ids(dataset)
    benchmarks = {}
    for level, benchmark in dataset.benchmarks.items():
        query_ids, gallery_ids = item_ids[level]
        benchmarks[level] = Benchmark(
            query_embeddings=embed_split(network, benchmark.query, dataset.spec, **options),
            query_labels=benchmark.query.labels,
            gallery_embeddings=embed_split(network, benchmark.gallery, dataset.spec, **options),
            gallery_labels=benchmark.gallery.labels,
            query_ids=query_ids,
            gallery_ids=gallery_ids,
        )
    return evaluate_benchmarks(benchmarks, device=device, mode=mode)


def benchmark_item_ids(dataset: DyMLDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per level, the item ids of the benchmark's queries and gallery (by file content)."""
    return {level: benchmark.item_ids() for level, benchmark in dataset.benchmarks.items()}
