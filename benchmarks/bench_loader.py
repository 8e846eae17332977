"""Loader throughput: dymlbench's train pipeline against the naive per-image pipeline.

Both run in one process on one core (``torch.set_num_threads(1)``), on JPEGs of DyML-like size
(about 300 px on the shorter side) generated into a temporary folder, and produce batches of
224 px crops:

- naive: PIL open, torchvision's classic ``RandomResizedCrop``, ``RandomHorizontalFlip``,
  ``ToTensor`` and ``Normalize`` per image, then stacked;
- dymlbench: :class:`~dymlbench.data.ImageDataset` with the paper's train transform on uint8
  tensors and :func:`~dymlbench.data.collate_batch`; normalisation then happens on the device
  (:class:`~dymlbench.data.BatchNormalize`), so the loader's figure leaves it out, and a second
  figure counts it on this CPU too.

Rounds of the pipelines alternate and the median round counts, so a busy machine disturbs both
alike. Run: ``python benchmarks/bench_loader.py [--images N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _write_jpegs(folder: Path, n_images: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n_images):
        height = 300
        width = int(300 * rng.uniform(1.0, 1.5))
        coarse = rng.integers(0, 256, (height // 12 + 1, width // 12 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        noisy = smooth.astype(np.int16) + rng.integers(-20, 21, smooth.shape)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            folder / f"{i}.jpg", quality=90
        )
        names.append(f"{i}.jpg")
    return names


def main() -> None:
    """Measure both pipelines and print images per second per core and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per pipeline")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torchvision.transforms as classic

    from dymlbench.data import BatchNormalize, ImageDataset, TrainTransform, collate_batch
    from dymlbench.data.dataset import Split
    from dymlbench.hierarchy import Hierarchy

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        names = _write_jpegs(root, args.images)
        paths = [str(root / name) for name in names]
        split = Split(
            name="bench",
            image_dir=root,
            fnames=tuple(names),
            hierarchy=Hierarchy.from_labels(np.zeros((len(names), 1), dtype=np.int64)),
            label_file=root / "label.csv",
            line_numbers=np.arange(1, len(names) + 1),
        )
        ours = ImageDataset(split, transform=TrainTransform(size=224), channel_order="bgr")
        normalize = BatchNormalize()
        naive_transform = classic.Compose(
            [
                classic.RandomResizedCrop(224, scale=(0.16, 1.0)),
                classic.RandomHorizontalFlip(),
                classic.ToTensor(),
                classic.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )
        batches = [
            range(start, min(start + args.batch_size, len(names)))
            for start in range(0, len(names), args.batch_size)
        ]

        def naive() -> float:
            start = time.perf_counter()
            for batch in batches:
                torch.stack([naive_transform(Image.open(paths[i]).convert("RGB")) for i in batch])
            return time.perf_counter() - start

        def ours_loader(with_normalize: bool) -> float:
            start = time.perf_counter()
            for batch in batches:
                images = collate_batch([ours[i] for i in batch])["images"]
                if with_normalize:
                    normalize(images)
            return time.perf_counter() - start

        timings: dict[str, list[float]] = {"naive": [], "ours": [], "ours+norm": []}
        naive()
        ours_loader(True)
        for _ in range(args.rounds):
            timings["naive"].append(naive())
            timings["ours"].append(ours_loader(False))
            timings["ours+norm"].append(ours_loader(True))

    rates = {key: len(names) / statistics.median(values) for key, values in timings.items()}
    print(
        f"{len(names)} JPEGs of about 300 px, 224 px train crops, 1 core, median of "
        f"{args.rounds} rounds"
    )
    print(
        f"  naive (PIL + classic transforms + ToTensor + Normalize): {rates['naive']:7.1f} img/s"
    )
    print(f"  dymlbench loader (uint8 out, normalised on device):      {rates['ours']:7.1f} img/s")
    print(
        f"  dymlbench loader + batch normalisation on this CPU:       "
        f"{rates['ours+norm']:7.1f} img/s"
    )
    print(
        f"  ratio loader / naive: {rates['ours'] / rates['naive']:.2f}x "
        f"(with CPU normalisation {rates['ours+norm'] / rates['naive']:.2f}x)"
    )


if __name__ == "__main__":
    main()
