"""The DyML data layer: readers for the released layouts, the toy dataset, samplers, transforms
and the class-disjoint validation split.

Typical use by a training engine::

    spec = DataSpec(dataset="toy", val_fraction=0.1)
    data = load_dataset(spec)                       # data.train, data.validation, data.benchmarks
    dataset = image_dataset(data.train, spec, train=True)
    sampler = MPerClassBatchSampler(data.train.labels, classes_per_batch=16)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch)
    images = BatchNormalize().to(device)(batch["images"].to(device))
"""

from __future__ import annotations

from dymlbench.data.cache import CACHE_ENV, cache_dir
from dymlbench.data.check import CheckReport, check_dataset, render_check_report
from dymlbench.data.csvfiles import (
    BENCHMARK_COLUMNS,
    HIERARCHY_COLUMNS,
    LabelFile,
    read_label_file,
    write_label_file,
)
from dymlbench.data.dataset import (
    DATA_ENV,
    DATASETS,
    Benchmark,
    DatasetInfo,
    DataSpec,
    DyMLDataset,
    Split,
    load_dataset,
    resolve_data_dir,
)
from dymlbench.data.errors import DataFormatError, DataNotFoundError, ImageFilesError
from dymlbench.data.files import content_digests, find_missing, scan_images
from dymlbench.data.loader import ImageDataset, collate_batch, eval_transform, image_dataset
from dymlbench.data.samplers import MPerClassBatchSampler
from dymlbench.data.split import choose_validation_classes, split_validation
from dymlbench.data.toy import ToyConfig, ensure_toy_dataset, generate_toy_dataset
from dymlbench.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchNormalize,
    TestTransform,
    TrainTransform,
    decode_image,
    normalize_batch,
)

__all__ = [
    "BENCHMARK_COLUMNS",
    "CACHE_ENV",
    "DATASETS",
    "DATA_ENV",
    "HIERARCHY_COLUMNS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchNormalize",
    "Benchmark",
    "CheckReport",
    "DataFormatError",
    "DataNotFoundError",
    "DataSpec",
    "DatasetInfo",
    "DyMLDataset",
    "ImageDataset",
    "ImageFilesError",
    "LabelFile",
    "MPerClassBatchSampler",
    "Split",
    "TestTransform",
    "ToyConfig",
    "TrainTransform",
    "cache_dir",
    "check_dataset",
    "choose_validation_classes",
    "collate_batch",
    "content_digests",
    "decode_image",
    "ensure_toy_dataset",
    "eval_transform",
    "find_missing",
    "generate_toy_dataset",
    "image_dataset",
    "load_dataset",
    "normalize_batch",
    "read_label_file",
    "render_check_report",
    "resolve_data_dir",
    "scan_images",
    "split_validation",
    "write_label_file",
]
