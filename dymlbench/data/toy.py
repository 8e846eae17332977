"""A small generated hierarchical image dataset in the released DyML layout.

The images carry the hierarchy so that metric learning has something to learn:

- coarse class: a shape family (ellipse, rectangle, triangle, star, cross, hexagon, diamond,
  arrow);
- middle class: a colour family (a band of hues, placed differently for every shape family)
  with its texture kind (plain, stripes, checks or dots);
- fine class: one instance of its middle class: its exact hue, saturation and brightness, its
  proportions, the orientation, period and phase of its texture.

Every image varies its position, scale and rotation, its background and lighting, and carries
noise. Test fine classes are disjoint from the train ones; the middle and coarse classes are
shared. The files are exactly the released layout, fused header lines included, so the real
readers read them. Everything is a function of the seed.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dymlbench.data.cache import cache_dir
from dymlbench.data.csvfiles import write_label_file
from dymlbench.hierarchy import LEVEL_NAMES

logger = logging.getLogger(__name__)

TOY_VERSION = 1
"""Bumped whenever the generator's output changes, so that cached copies are regenerated."""

SHAPES: tuple[str, ...] = (
    "ellipse",
    "rectangle",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "diamond",
    "arrow",
)
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checks", "dots")

TRAIN_HEADER = ("fname", "coarse_id", "middle_id", "fine_id")
BENCHMARK_HEADER = ("fname", "labels")
_COMPLETE = ".complete"


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    """Sizes of the toy dataset.

    The defaults give 120 train fine classes (1920 images), 60 test fine classes, 20 middle
    and 5 coarse classes, at 64 px: about 4600 files for the vehicle layout (each benchmark
    720 gallery images plus 180 queries that are copies of gallery images) and 2640 for the
    product layout.

    Attributes:
        layout: ``vehicle`` (three ``bmk_<level>`` benchmarks) or ``product`` (one
            ``mini-bmk_all_in_one`` set).
        image_size: side of the square images.
        n_coarse: coarse classes (shape families), at most ``len(SHAPES)``.
        middle_per_coarse: middle classes (colour families) per coarse class.
        train_fine_per_middle: train fine classes per middle class.
        test_fine_per_middle: test fine classes per middle class.
        train_images_per_class: images per train fine class.
        test_images_per_class: gallery (or test) images per test fine class.
        queries_per_class: queries per class of a benchmark; they are copies of gallery
            images, as the official evaluator assumes.
        jpeg_quality: JPEG quality of the written files.
    """

    layout: str = "vehicle"
    image_size: int = 64
    n_coarse: int = 5
    middle_per_coarse: int = 4
    train_fine_per_middle: int = 6
    test_fine_per_middle: int = 3
    train_images_per_class: int = 16
    test_images_per_class: int = 12
    queries_per_class: int = 3
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.layout not in ("vehicle", "product"):
            raise ValueError(f"`layout` must be 'vehicle' or 'product', but got {self.layout!r}")
        if not 1 <= self.n_coarse <= len(SHAPES):
            raise ValueError(
                f"`n_coarse` must be between 1 and {len(SHAPES)}, but got {self.n_coarse}"
            )
        for name in (
            "middle_per_coarse",
            "train_fine_per_middle",
            "test_fine_per_middle",
            "train_images_per_class",
            "test_images_per_class",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, but got {getattr(self, name)}")
        if not 0 <= self.queries_per_class <= self.test_images_per_class:
            raise ValueError(
                "`queries_per_class` must be between 0 and `test_images_per_class` "
                f"({self.test_images_per_class}), but got {self.queries_per_class}"
            )
        if self.image_size < 16:
            raise ValueError(f"`image_size` must be at least 16, but got {self.image_size}")


@dataclass(frozen=True)
class _FineClass:
    fine: int
    middle: int
    coarse: int
    shape: str
    texture: str
    hue: float
    saturation: float
    value: float
    aspect: float
    angle: float
    period: float
    phase: float


def _shape_polygon(shape: str, aspect: float) -> np.ndarray:
    """Vertices ``[k, 2]`` of a shape in unit coordinates, before the image's transform."""
    if shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "rectangle":
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.85
    elif shape == "triangle":
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        points = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        points = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    elif shape == "cross":
        a, b = 0.33, 1.0
        points = np.array(
            [
                [-a, -b],
                [a, -b],
                [a, -a],
                [b, -a],
                [b, a],
                [a, a],
                [a, b],
                [-a, b],
                [-a, a],
                [-b, a],
                [-b, -a],
                [-a, -a],
            ]
        )
    elif shape == "hexagon":
        t = np.arange(6) * np.pi / 3
        points = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "diamond":
        points = np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], dtype=float)
    else:
        points = np.array(
            [[-1, -0.3], [0.2, -0.3], [0.2, -0.75], [1, 0], [0.2, 0.75], [0.2, 0.3], [-1, 0.3]]
        )
    return points * np.array([aspect, 1.0 / aspect])


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value)) * 255.0


def _texture(kind: str, u: np.ndarray, v: np.ndarray, period: float, phase: float) -> np.ndarray:
    """1 where the texture shows the second colour, else 0, over the shape frame ``u, v``."""
    if kind == "plain":
        return np.zeros_like(u)
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / period + phase) > 0).astype(float)
    if kind == "checks":
        return (np.sin(2 * np.pi * u / period + phase) * np.sin(2 * np.pi * v / period) > 0) * 1.0
    cell_u = (u / period + phase / (2 * np.pi)) % 1.0 - 0.5
    cell_v = (v / period) % 1.0 - 0.5
    return (cell_u**2 + cell_v**2 < 0.09).astype(float)


def render_toy_image(fine_class: _FineClass, *, size: int, seed: tuple[int, ...]) -> np.ndarray:
    """Draw one image of a fine class, uint8 ``[size, size, 3]``, as a function of ``seed``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(list(seed))
    scale = rng.uniform(0.55, 0.85)
    rotation = fine_class.angle + rng.uniform(-0.45, 0.45)
    shift = rng.uniform(-0.18, 0.18, size=2)

    # shape mask, drawn at twice the size and reduced, for smooth edges
    polygon = _shape_polygon(fine_class.shape, fine_class.aspect) * scale
    cos, sin = math.cos(rotation), math.sin(rotation)
    polygon = polygon @ np.array([[cos, sin], [-sin, cos]]) + shift
    big = 2 * size
    pixels = (polygon + 1.0) * 0.5 * big
    mask_image = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask_image).polygon([tuple(p) for p in pixels.tolist()], fill=255)
    mask = np.asarray(mask_image.resize((size, size), Image.BOX), dtype=float)[..., None] / 255

    # texture in the shape's own frame, so it turns and moves with the shape
    grid = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(grid, grid, indexing="ij")
    u = ((x - shift[0]) * cos + (y - shift[1]) * sin) / scale
    v = (-(x - shift[0]) * sin + (y - shift[1]) * cos) / scale
    pattern = _texture(fine_class.texture, u, v, fine_class.period, fine_class.phase)[..., None]
    light = rng.uniform(0.8, 1.1)
    first = _hsv(fine_class.hue, fine_class.saturation, fine_class.value * light)
    second = _hsv(fine_class.hue + 0.5, fine_class.saturation * 0.6, 0.35 * light)
    foreground = first * (1 - pattern) + second * pattern

    background_colour = _hsv(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.9))
    gradient = rng.uniform(-40, 40, size=2)
    background = background_colour + (gradient[0] * x + gradient[1] * y)[..., None]
    image = mask * foreground + (1 - mask) * background
    image = image + rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _fine_attributes(rng: np.random.Generator, band: float) -> dict[str, float]:
    """What tells the fine classes of one middle class apart, drawn at random."""
    return {
        "hue_offset": rng.uniform(-0.35, 0.35) * band,
        "saturation": rng.uniform(0.55, 1.0),
        "value": rng.uniform(0.65, 1.0),
        "aspect": math.exp(rng.uniform(-0.35, 0.35)),
        "angle": rng.uniform(0, 2 * np.pi),
        "period": rng.uniform(0.25, 0.6),
        "phase": rng.uniform(0, 2 * np.pi),
    }


def _fine_classes(config: ToyConfig, seed: int) -> tuple[list[_FineClass], list[_FineClass]]:
    """The train and the test fine classes, their ids drawn at random (non-contiguous)."""
    rng = np.random.default_rng([seed, 0])
    n_middle = config.n_coarse * config.middle_per_coarse
    per_middle = config.train_fine_per_middle + config.test_fine_per_middle
    coarse_ids = rng.choice(100, size=config.n_coarse, replace=False)
    middle_ids = rng.choice(1000, size=n_middle, replace=False)
    fine_ids = rng.choice(100_000, size=n_middle * per_middle, replace=False)
    band = 1.0 / config.middle_per_coarse

    train, test = [], []
    for c in range(config.n_coarse):
        for j in range(config.middle_per_coarse):
            middle = c * config.middle_per_coarse + j
            centre = (j + 0.5) * band + 0.13 * c
            texture = TEXTURES[(j + c) % len(TEXTURES)]
            for f in range(per_middle):
                drawn = _fine_attributes(rng, band)
                item = _FineClass(
                    fine=int(fine_ids[middle * per_middle + f]),
                    middle=int(middle_ids[middle]),
                    coarse=int(coarse_ids[c]),
                    shape=SHAPES[c],
                    texture=texture,
                    hue=centre + drawn["hue_offset"],
                    saturation=drawn["saturation"],
                    value=drawn["value"],
                    aspect=drawn["aspect"],
                    angle=drawn["angle"],
                    period=drawn["period"],
                    phase=drawn["phase"],
                )
                (train if f < config.train_fine_per_middle else test).append(item)
    return train, test


def _write_images(
    folder: Path,
    classes: list[_FineClass],
    n_per_class: int,
    *,
    config: ToyConfig,
    seed: int,
    part: int,
) -> tuple[list[str], np.ndarray, list[int]]:
    """Render ``n_per_class`` images of every class in random order, named 0.jpg, 1.jpg, ...

    Returns:
        The file names, their labels ``[n, 3]`` (fine, middle, coarse) and the class index of
        each file.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    items = [(k, i) for k in range(len(classes)) for i in range(n_per_class)]
    order = np.random.default_rng([seed, 3, part]).permutation(len(items))
    fnames, labels, owners = [], [], []
    for number, item_index in enumerate(order.tolist()):
        k, i = items[item_index]
        fine_class = classes[k]
        pixels = render_toy_image(fine_class, size=config.image_size, seed=(seed, part, k, i))
        fname = f"{number}.jpg"
        Image.fromarray(pixels).save(folder / fname, quality=config.jpeg_quality)
        fnames.append(fname)
        labels.append((fine_class.fine, fine_class.middle, fine_class.coarse))
        owners.append(k)
    return fnames, np.asarray(labels, dtype=np.int64), owners


def _write_benchmark(
    folder: Path, classes: list[_FineClass], level: int, *, config: ToyConfig, seed: int
) -> None:
    """``bmk_<level>``: a gallery of test images, queries copied from the gallery."""
    fnames, labels, owners = _write_images(
        folder / "gallery",
        classes,
        config.test_images_per_class,
        config=config,
        seed=seed,
        part=10 + level,
    )
    write_label_file(
        folder / "gallery.csv", fnames, labels[:, level], header=BENCHMARK_HEADER, fused=True
    )

    rng = np.random.default_rng([seed, 4, level])
    owners_array = np.asarray(owners)
    chosen = np.concatenate(
        [
            rng.choice(np.flatnonzero(owners_array == k), config.queries_per_class, replace=False)
            for k in range(len(classes))
        ]
    )
    chosen = chosen[rng.permutation(len(chosen))]
    (folder / "query").mkdir(parents=True, exist_ok=True)
    query_names = []
    for number, row in enumerate(chosen.tolist()):
        query_names.append(f"{number}.jpg")
        shutil.copyfile(folder / "gallery" / fnames[row], folder / "query" / query_names[-1])
    write_label_file(
        folder / "query.csv",
        query_names,
        labels[chosen, level],
        header=BENCHMARK_HEADER,
        fused=True,
    )


def generate_toy_dataset(
    out: str | Path, *, seed: int = 0, config: ToyConfig | None = None
) -> Path:
    """Write the toy dataset into ``out``, atomically (into a temporary sibling, then renamed).

    Args:
        out: the dataset folder to create; it must not exist, or be empty.
        seed: everything written is a function of the seed and the config.
        config: the sizes and the layout; default :class:`ToyConfig()`.

    Returns:
        ``out``.

    Raises:
        FileExistsError: ``out`` exists and is not empty.
    """
    config = config or ToyConfig()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"`--out` must be a new or empty folder, but `{out}` is not empty; choose another"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _generate(temporary, seed=seed, config=config)
        (temporary / _COMPLETE).write_text(f"toy v{TOY_VERSION} seed {seed}\n{config}\n")
        if out.exists():
            out.rmdir()
        os.rename(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.info("wrote the toy dataset (%s layout, seed %d) to %s", config.layout, seed, out)
    return out


def _generate(root: Path, *, seed: int, config: ToyConfig) -> None:
    train_classes, test_classes = _fine_classes(config, seed)
    fnames, labels, _ = _write_images(
        root / "train" / "imgs",
        train_classes,
        config.train_images_per_class,
        config=config,
        seed=seed,
        part=1,
    )
    write_label_file(root / "train" / "label.csv", fnames, labels, header=TRAIN_HEADER)

    if config.layout == "vehicle":
        for level, name in enumerate(LEVEL_NAMES):
            _write_benchmark(root / f"bmk_{name}", test_classes, level, config=config, seed=seed)
    else:
        folder = root / "mini-bmk_all_in_one"
        fnames, labels, _ = _write_images(
            folder / "imgs",
            test_classes,
            config.test_images_per_class,
            config=config,
            seed=seed,
            part=2,
        )
        write_label_file(folder / "label.csv", fnames, labels, header=TRAIN_HEADER)


def ensure_toy_dataset(
    *, layout: str = "vehicle", seed: int = 0, config: ToyConfig | None = None
) -> Path:
    """The toy dataset in the cache directory, generated on first use.

    Generation writes into a temporary folder and renames it into place, so concurrent callers
    (DDP ranks, sweep workers) never see a partial dataset; a loser of the race removes its copy.

    Args:
        layout: ``vehicle`` or ``product``.
        seed: the generator seed.
        config: other sizes than the defaults (its ``layout`` is replaced by ``layout``).

    Returns:
        The dataset folder, ``<cache>/toy-v<version>/<layout>-seed<seed>`` (with a digest of
        the config appended when it is not the default).
    """
    config = dataclasses.replace(config or ToyConfig(), layout=layout)
    name = f"{layout}-seed{seed}"
    if config != ToyConfig(layout=layout):
        name += "-" + hashlib.blake2b(repr(config).encode(), digest_size=4).hexdigest()
    target = cache_dir() / f"toy-v{TOY_VERSION}" / name
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    logger.info("generating the toy dataset (%s layout, seed %d) in %s", layout, seed, target)
    try:
        _generate(temporary, seed=seed, config=config)
        (temporary / _COMPLETE).write_text(f"toy v{TOY_VERSION} seed {seed}\n{config}\n")
        os.rename(temporary, target)
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)
        if not (target / _COMPLETE).is_file():
            raise
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target
