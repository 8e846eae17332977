"""Checks of the image files a label file lists, and content digests of images.

Two passes: :func:`find_missing` lists the files that do not exist (one directory listing per
folder, fast enough to run before every training run); :func:`scan_images` reads and decodes
every file (``dymlbench data check``) and can return a content digest of each.

Two benchmark entries are the same item when their files have identical content (equal BLAKE2b
digests of the bytes), whatever their names: released query and gallery files live in separate
folders and are numbered separately, so equal names say nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dymlbench.data.cache import cache_dir
from dymlbench.data.errors import ImageFilesError

logger = logging.getLogger(__name__)

N_EXAMPLES = 5
"""How many paths an error or a report lists."""


def find_missing(image_dir: Path, fnames: Sequence[str]) -> list[str]:
    """The file names in ``fnames`` that do not exist in ``image_dir``.

    Args:
        image_dir: the folder the names are relative to.
        fnames: file names (relative paths), e.g. from a label file.

    Returns:
        The missing names, in the order of ``fnames``.
    """
    try:
        present = {entry.name for entry in os.scandir(image_dir)}
    except FileNotFoundError:
        return list(fnames)
    return [
        fname
        for fname in fnames
        if (fname not in present if "/" not in fname else not (image_dir / fname).is_file())
    ]


def require_present(image_dir: Path, fnames: Sequence[str], *, label_file: Path) -> None:
    """Raise when files listed in ``label_file`` are missing from ``image_dir``.

    Raises:
        ImageFilesError: with the count and the first few missing paths.
    """
    missing = find_missing(image_dir, fnames)
    if missing:
        examples = ", ".join(str(image_dir / fname) for fname in missing[:N_EXAMPLES])
        raise ImageFilesError(
            f"every image listed in `{label_file}` must exist, but {len(missing)} of "
            f"{len(fnames)} are missing, e.g. {examples}; restore them from the released "
            "archive, or run `dymlbench data check` for the full list"
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class ScanResult:
    """What a full pass over image files found.

    Attributes:
        unreadable: ``(path, reason)`` for every file that is missing or does not decode.
        digests: a 16-byte BLAKE2b digest per file (``None`` for a missing file), or ``None``
            when no digests were asked for.
    """

    unreadable: list[tuple[str, str]]
    digests: list[bytes | None] | None


def _scan_one(path: Path, digest: bool) -> tuple[str | None, bytes | None]:
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as error:
        return f"cannot be read ({error.strerror or error})", None
    key = hashlib.blake2b(data, digest_size=16).digest() if digest else None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # any decoder failure makes the file unreadable
        return f"does not decode ({type(error).__name__}: {error})", key
    return None, key


def scan_images(
    paths: Sequence[Path], *, digests: bool = False, workers: int | None = None
) -> ScanResult:
    """Read and decode every file (JPEGs at reduced scale, which still reads the whole stream).

    Args:
        paths: the image files.
        digests: also return a content digest of every file.
        workers: decoding threads; default the number of CPUs.

    Returns:
        The unreadable files with the reason, and the digests if asked for.
    """
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda path: _scan_one(Path(path), digests), paths))
    unreadable = [
        (str(path), why) for path, (why, _) in zip(paths, results, strict=True) if why is not None
    ]
    return ScanResult(
        unreadable=unreadable,
        digests=[key for _, key in results] if digests else None,
    )


def _digest_one(path: Path) -> bytes:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()


def content_digests(paths: Sequence[Path], *, use_cache: bool = True) -> np.ndarray:
    """BLAKE2b content digests of files, cached in the user cache directory.

    The cache entry is keyed by every path with its size and modification time, so a changed
    file is hashed again.

    Args:
        paths: the files.
        use_cache: read and write the cache.

    Returns:
        ``[n]`` array of 16-byte digests (numpy dtype ``S16``).
    """
    stamp = hashlib.blake2b(digest_size=16)
    for path in paths:
        info = os.stat(path)
        stamp.update(f"{os.path.abspath(path)}|{info.st_size}|{info.st_mtime_ns}\n".encode())
    cache_file = cache_dir() / "digests" / f"{stamp.hexdigest()}.npy"
    if use_cache and cache_file.is_file():
        return np.load(cache_file)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        digests = np.array(list(pool.map(_digest_one, map(Path, paths))), dtype="S16")
    if use_cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache_file.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(temporary, digests)
            os.replace(temporary, cache_file)
        except OSError as error:
            logger.warning("could not cache content digests in %s: %s", cache_file, error)
    return digests


def item_ids_from_digests(*groups: np.ndarray) -> tuple[np.ndarray, ...]:
    """Give equal int64 ids to equal digests across several groups of files.

    Args:
        groups: digest arrays ``[n_g]`` (e.g. query, gallery).

    Returns:
        One int64 ``[n_g]`` array per group; an id is shared exactly by files of equal content.

    Example:
        >>> q, g = item_ids_from_digests(np.array([b"a", b"b"]), np.array([b"c", b"a"]))
        >>> q.tolist(), g.tolist()
        ([0, 1], [2, 0])
    """
    joint = np.concatenate(groups) if groups else np.array([], dtype="S16")
    _, first, inverse = np.unique(joint, return_index=True, return_inverse=True)
    # number the distinct contents by first appearance, so ids do not depend on digest order
    order = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    ids = order[inverse.reshape(-1)].astype(np.int64)
    bounds = np.cumsum([0, *(len(group) for group in groups)])
    return tuple(ids[bounds[i] : bounds[i + 1]] for i in range(len(groups)))
