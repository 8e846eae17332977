"""Transforms on uint8 tensors, batch normalisation, the torch dataset and its loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dymlbench.data import (
    BatchNormalize,
    DataSpec,
    ImageDataset,
    MPerClassBatchSampler,
    TestTransform,
    TrainTransform,
    collate_batch,
    decode_image,
    image_dataset,
    load_dataset,
    normalize_batch,
)


@pytest.fixture
def jpeg(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    pixels[:, :, 0] = 250  # red dominates, to tell the channel orders apart
    path = tmp_path / "0.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_channel_order(jpeg):
    rgb = decode_image(jpeg, channel_order="rgb")
    bgr = decode_image(jpeg, channel_order="bgr")
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 30, 40)
    assert torch.equal(bgr, rgb.flip(0))
    assert rgb[0].float().mean() > 200 > bgr[0].float().mean()


def test_test_transform_matches_the_classic_pipeline(jpeg):
    import torchvision.transforms as classic

    expected = classic.Compose([classic.Resize(16), classic.CenterCrop(12), classic.PILToTensor()])
    ours = TestTransform(size=12, resize=16)(decode_image(jpeg, channel_order="rgb"))
    reference = expected(Image.open(jpeg).convert("RGB"))
    assert ours.shape == reference.shape == (3, 12, 12)
    assert (ours.int() - reference.int()).abs().float().mean() < 3


def test_train_transform_is_random_and_reproducible(jpeg):
    image = decode_image(jpeg)
    transform = TrainTransform(size=16)
    torch.manual_seed(0)
    first = [transform(image) for _ in range(4)]
    torch.manual_seed(0)
    second = [transform(image) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(first[0], other) for other in first[1:])
    assert all(crop.shape == (3, 16, 16) and crop.dtype == torch.uint8 for crop in first)


def test_batch_normalisation_matches_per_image_normalize():
    import torchvision.transforms as classic

    images = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    normalize = classic.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = torch.stack([normalize(image.float() / 255) for image in images])
    torch.testing.assert_close(BatchNormalize()(images), expected)
    torch.testing.assert_close(normalize_batch(images), expected)
    with pytest.raises(ValueError, match=r"must have shape \[B, 3, H, W\]"):
        BatchNormalize()(images[0])


def test_loader_yields_uint8_batches(tmp_path):
    from dymlbench.data import ToyConfig, generate_toy_dataset

    config = ToyConfig(
        layout="product",
        image_size=24,
        n_coarse=2,
        middle_per_coarse=2,
        train_fine_per_middle=2,
        test_fine_per_middle=1,
        train_images_per_class=4,
        test_images_per_class=2,
        queries_per_class=1,
    )
    root = generate_toy_dataset(tmp_path / "toy", config=config)
    spec = DataSpec(dataset="toy", data_dir=root, image_size=16)
    data = load_dataset(spec)
    dataset = image_dataset(data.train, spec, train=True)
    sampler = MPerClassBatchSampler(data.train.labels, classes_per_batch=4, samples_per_class=2)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch)

    batch = next(iter(loader))
    assert batch["images"].shape == (8, 3, 16, 16) and batch["images"].dtype == torch.uint8
    assert batch["labels"].shape == (8, 3) and batch["labels"].dtype == torch.int64
    assert torch.equal(batch["labels"], torch.from_numpy(data.train.labels[batch["indices"]]))
    test_item = image_dataset(data.test, spec, train=False)[0]
    assert test_item["image"].shape == (3, 16, 16)


def test_unreadable_image_names_file_and_line(tmp_path):
    from dymlbench.data import ImageFilesError

    root = tmp_path
    (root / "train" / "imgs").mkdir(parents=True)
    (root / "train" / "imgs" / "0.jpg").write_bytes(b"not a jpeg")
    (root / "train" / "label.csv").write_text(
        "fname, coarse_id, middle_id, fine_id0.jpg, 1, 2, 3\n"
    )
    from dymlbench.data.dataset import read_train

    dataset = ImageDataset(read_train(root), transform=None)
    with pytest.raises(ImageFilesError, match=r"0\.jpg` \(line 1 of .*label\.csv`\) must decode"):
        dataset[0]
