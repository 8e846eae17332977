"""Result records that are published: checking them, naming them, adding and reading them.

A record (:mod:`dymlbench.engine.records`) enters ``leaderboards/results/`` only through
:func:`add_records` (``dymlbench leaderboard add RUN_DIR...``), which checks it first and
refuses, with the file and the reason:

- a record of a sweep trial (a non-null top-level ``sweep``: trials are scored on the validation
  split, and their test numbers would be a choice made on the test set);
- a record without test metrics (``metrics`` missing or empty, or no ``overall/*`` key);
- a record whose keys the leaderboard needs are missing or of the wrong type;
- a record whose per-query file (``per_query_file``) is missing or malformed;
- a second record of the same method, setting and seed (remove the old one to replace it).

Layout of the results folder, one folder per record so that a record keeps the run folder's
file names (its ``per_query_file`` still names its neighbour)::

    results/<dataset>/<method>-seed<seed>-<hash>/record.json
    results/<dataset>/<method>-seed<seed>-<hash>/per_query.npz     (when the run wrote one)

``<hash>`` is the first 8 hex digits of the SHA-256 of the record's canonical JSON (sorted keys,
no spaces), so a name is a function of the record: adding the same run twice is a no-op, and a
record edited after it was added no longer matches its folder and is refused by
:func:`load_results`.

The setting (:class:`Setting`) is what separates rows: the backbone, the initialisation (kind,
and the checkpoint's hash for a checkpoint), the embedding size, the epochs, the batch, the test
evaluation's rules (``engine.eval_mode``), the reported network, and a hash of every other key
of the configuration except those that cannot change the numbers (:data:`IGNORED_CONFIG_KEYS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

RECORD_FILE = "record.json"
"""The record's file name, in a run folder and in a results folder alike."""

RECORD_SCHEMA_VERSION = 1
"""The record schema this leaderboard reads (:data:`dymlbench.engine.records.SCHEMA_VERSION`)."""

IGNORED_CONFIG_KEYS = frozenset(
    {
        "engine.seed",
        "engine.device",
        "engine.progress",
        "engine.num_workers",
        "engine.checkpoint_every",
        "data.data_dir",
        "model.pretrained",
    }
)
"""Configuration keys left out of the setting: the seed (rows aggregate over it), where the run
ran and how it showed progress (:data:`dymlbench.engine.run.RUNTIME_KEYS`), how often it saved,
where the data sat, and the checkpoint's path (the setting holds its kind and hash instead)."""

_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "method": str,
    "dataset": str,
    "seed": int,
    "config": dict,
    "metrics": dict,
    "initialisation": dict,
    "hardware": dict,
    "gpu_hours": (int, float),
}
_REQUIRED_CONFIG = (
    "model.backbone",
    "model.embedding_dim",
    "optim.epochs",
    "optim.classes_per_batch",
    "optim.images_per_class",
    "engine.eval_mode",
)
_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CHECKPOINT_KINDS_WITHOUT_FILE = frozenset({"scratch", "imagenet"})


class RecordError(ValueError):
    """A record that cannot enter the leaderboard; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True, kw_only=True, order=True)
class Setting:
    """Everything about a run that can move its numbers, the seed excepted.

    Attributes:
        backbone: ``model.backbone``.
        initialisation: the record's ``initialisation.kind``, with the first 8 hex digits of
            the checkpoint's SHA-256 for a checkpoint (``"dino:1a2b3c4d"``).
        embedding_dim: ``model.embedding_dim``.
        epochs: ``optim.epochs``.
        batch: ``"<optim.classes_per_batch>x<optim.images_per_class>"``.
        eval_mode: ``engine.eval_mode`` (``"default"`` or ``"official"``).
        network: the reported network (``"online"`` or ``"ema"``).
        config_hash: 8 hex digits of the SHA-256 of every other configuration key and value
            except :data:`IGNORED_CONFIG_KEYS`.
    """

    backbone: str
    initialisation: str
    embedding_dim: int
    epochs: int
    batch: str
    eval_mode: str
    network: str
    config_hash: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredRecord:
    """A checked record, in a run folder or in the results folder.

    Attributes:
        path: its ``record.json``.
        name: its name in the results folder, ``<method>-seed<seed>-<hash>``.
        record: the record's content.
        setting: its setting.
        per_query_path: its per-query ``.npz`` file, or ``None`` when the run wrote none.
    """

    path: Path
    name: str
    record: Mapping[str, Any]
    setting: Setting
    per_query_path: Path | None

    @property
    def method(self) -> str:
        """The registry key of the method."""
        return self.record["method"]

    @property
    def dataset(self) -> str:
        """The dataset name."""
        return self.record["dataset"]

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.record["seed"]

    @property
    def metrics(self) -> Mapping[str, float | None]:
        """The test metrics, fractions in [0, 1] (``None`` where undefined)."""
        return self.record["metrics"]


def record_digest(record: Mapping[str, Any]) -> str:
    """The SHA-256 of the record's canonical JSON (sorted keys, no spaces), in hex."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def record_name(record: Mapping[str, Any]) -> str:
    """The record's folder name in the results folder: ``<method>-seed<seed>-<hash>``.

    Example:
        >>> record_name({"method": "msa", "seed": 0, "dataset": "toy"})
        'msa-seed0-8d0b87cf'
    """
    return f"{record['method']}-seed{record['seed']}-{record_digest(record)[:8]}"


def setting_of(record: Mapping[str, Any]) -> Setting:
    """The setting of a checked record (see :class:`Setting`)."""
    config = _flatten(record["config"])
    initialisation = record["initialisation"]
    kind = str(initialisation.get("kind"))
    digest = initialisation.get("sha256")
    if kind not in _CHECKPOINT_KINDS_WITHOUT_FILE and digest:
        kind = f"{kind}:{str(digest)[:8]}"
    rest = {key: value for key, value in config.items() if key not in IGNORED_CONFIG_KEYS}
    rest_text = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)
    return Setting(
        backbone=str(config["model.backbone"]),
        initialisation=kind,
        embedding_dim=int(config["model.embedding_dim"]),
        epochs=int(config["optim.epochs"]),
        batch=f"{config['optim.classes_per_batch']}x{config['optim.images_per_class']}",
        eval_mode=str(config["engine.eval_mode"]),
        network=str(record.get("reported_network") or "online"),
        config_hash=hashlib.sha256(rest_text.encode("utf-8")).hexdigest()[:8],
    )


def read_record(path: str | Path) -> StoredRecord:
    """Read and check a record: a run folder, or the path of its ``record.json``.

    Raises:
        RecordError: the record is missing, unreadable, or refused (the module docstring
            lists the reasons); the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_FILE
    if not path.is_file():
        raise RecordError(
            f"`{path}` must be a finished run's result record, but it does not exist; pass a "
            "run folder that holds record.json (a run writes it when it has finished)"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"`{path}` must be a JSON result record, but: {error}") from None
    check_record(record, path=path)
    per_query_path = None
    if record.get("per_query_file") is not None:
        per_query_path = path.parent / record["per_query_file"]
        try:
            read_per_query(per_query_path)
        except (OSError, ValueError) as error:
            raise RecordError(f"`{path}`: `per_query_file` is unusable: {error}") from None
    return StoredRecord(
        path=path,
        name=record_name(record),
        record=record,
        setting=setting_of(record),
        per_query_path=per_query_path,
    )


def check_record(record: Any, *, path: str | Path) -> None:
    """Check that a record can enter the leaderboard.

    Args:
        record: the loaded JSON.
        path: the file, for the messages.

    Raises:
        RecordError: the first problem, naming the file, the key and what to do.
    """
    if not isinstance(record, dict):
        raise RecordError(f"`{path}` must hold a JSON object, but got {type(record).__name__}")
    sweep = record.get("sweep")
    if sweep is not None:
        raise RecordError(
            f"`{path}`: `sweep` must be null in a leaderboard record, but got {sweep!r}: a sweep "
            "trial is scored on the validation split; retrain the chosen setting with "
            "`dymlbench run` and add that run"
        )
    metrics = record.get("metrics")
    if not metrics:
        raise RecordError(
            f"`{path}`: `metrics` must hold the test metrics, but got {metrics!r}: the run has "
            "no test evaluation; add a run that finished with one"
        )
    for key, expected in _REQUIRED_KEYS.items():
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, expected):
            names = expected.__name__ if isinstance(expected, type) else "a number"
            raise RecordError(
                f"`{path}`: `{key}` must be {names}, but got {value!r}; the record is not one "
                "that `dymlbench run` writes"
            )
    if record["schema_version"] != RECORD_SCHEMA_VERSION:
        raise RecordError(
            f"`{path}`: `schema_version` must be {RECORD_SCHEMA_VERSION}, but got "
            f"{record['schema_version']!r}; this dymlbench reads only schema "
            f"{RECORD_SCHEMA_VERSION}"
        )
    for key in ("method", "dataset"):
        if not _NAME_PATTERN.fullmatch(record[key]):
            raise RecordError(
                f"`{path}`: `{key}` must be a lower-case name (letters, digits, '-', '_'), but "
                f"got {record[key]!r}"
            )
    if record["seed"] < 0:
        raise RecordError(f"`{path}`: `seed` must be >= 0, but got {record['seed']!r}")

    for key, value in metrics.items():
        valid = value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
        )
        if not valid:
            raise RecordError(
                f"`{path}`: `metrics.{key}` must be a fraction in [0, 1] or null, but got "
                f"{value!r}"
            )
    if not any(key.startswith("overall/") for key in metrics):
        raise RecordError(
            f"`{path}`: `metrics` must hold the overall test metrics (`overall/map`, ...), but "
            f"got only {sorted(metrics)}"
        )

    config = _flatten(record["config"])
    for key in _REQUIRED_CONFIG:
        if key not in config:
            raise RecordError(
                f"`{path}`: `config.{key}` must be given, but it is missing; the record is not "
                "one that `dymlbench run` writes"
            )
    if not isinstance(record["initialisation"].get("kind"), str):
        raise RecordError(
            f"`{path}`: `initialisation.kind` must be a string, but got "
            f"{record['initialisation'].get('kind')!r}"
        )
    per_query_file = record.get("per_query_file")
    if per_query_file is not None and (
        not isinstance(per_query_file, str)
        or Path(per_query_file).name != per_query_file
        or per_query_file in ("", ".", "..")
    ):
        raise RecordError(
            f"`{path}`: `per_query_file` must be a file name next to the record, or null, but "
            f"got {per_query_file!r}"
        )


def read_per_query(path: Path) -> dict[str, np.ndarray]:
    """Read and check a per-query ``.npz`` file.

    Arrays (:func:`dymlbench.evaluation.report.write_per_query`): for each group (a level, or
    ``multi``) ``<group>/query_index`` int64 ``[n_counted]``, unique; and ``<group>/<metric>``
    float64 ``[n_counted]`` in [0, 1], the values of those queries.

    Returns:
        Array name to array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an ``.npz`` archive or breaks the layout above.
    """
    import zipfile

    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"`{path}` must be the run's per-query file, but it is missing")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"`{path}` must be an .npz archive, but: {error}") from None
    groups = {name.split("/", 1)[0] for name in arrays}
    for group in sorted(groups):
        index = arrays.get(f"{group}/query_index")
        if index is None:
            raise ValueError(f"`{path}` must hold `{group}/query_index`, but it is missing")
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ValueError(
                f"`{path}`: `{group}/query_index` must be a 1-d integer array, but got "
                f"{index.dtype} of shape {index.shape}"
            )
        if np.unique(index).size != index.size:
            raise ValueError(f"`{path}`: `{group}/query_index` must not repeat a query")
        for name in sorted(arrays):
            if not name.startswith(f"{group}/") or name == f"{group}/query_index":
                continue
            values = arrays[name]
            if values.shape != index.shape or values.dtype.kind != "f":
                raise ValueError(
                    f"`{path}`: `{name}` must be floats of shape {index.shape} (one per counted "
                    f"query), but got {values.dtype} of shape {values.shape}"
                )
            if not np.all((values >= 0) & (values <= 1)):
                raise ValueError(f"`{path}`: `{name}` must hold fractions in [0, 1]")
    return arrays


def load_results(results_dir: str | Path) -> list[StoredRecord]:
    """Read every record of a results folder, checked, sorted by dataset, method and name.

    Raises:
        FileNotFoundError: the folder does not exist.
        RecordError: a refused record, one that is not in the folder its content names
            (edited after it was added, or copied by hand), or two of one method, setting and
            seed.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(
            f"`results` must be the folder of published records (leaderboards/results), but "
            f"`{results_dir}` does not exist; run from the repository root or pass `--results`"
        )
    stored = []
    for path in sorted(results_dir.glob(f"*/*/{RECORD_FILE}")):
        record = read_record(path)
        expected = results_dir / record.dataset / record.name
        if path.parent != expected:
            raise RecordError(
                f"`{path}` must sit in `{expected}`, the folder its content names; it was "
                "edited or copied by hand: add the run again with `dymlbench leaderboard add`"
            )
        stored.append(record)
    _check_unique(stored)
    stored.sort(key=lambda item: (item.dataset, item.method, item.setting, item.seed, item.name))
    return stored


def add_records(
    sources: Iterable[str | Path], results_dir: str | Path
) -> tuple[list[Path], list[Path]]:
    """Check records and copy them, with their per-query files, into the results folder.

    Every record is checked before any is copied: one refused record adds none.

    Args:
        sources: run folders, or paths of ``record.json`` files.
        results_dir: the results folder (``leaderboards/results``); created if missing.

    Returns:
        The ``record.json`` paths added, and those already present (the same record).

    Raises:
        RecordError: the records refused, one reason per line, each naming its file.
    """
    results_dir = Path(results_dir)
    existing = load_results(results_dir) if results_dir.is_dir() else []
    present = {(item.dataset, item.name) for item in existing}

    problems: list[str] = []
    incoming: list[StoredRecord] = []
    for source in sources:
        try:
            incoming.append(read_record(source))
        except RecordError as error:
            problems.append(str(error))
    new = [item for item in incoming if (item.dataset, item.name) not in present]
    try:
        _check_unique([*existing, *_first_of_each(new)])
    except RecordError as error:
        problems.append(str(error))
    if problems:
        raise RecordError("\n".join(problems))

    added, skipped = [], []
    for item in incoming:
        target = results_dir / item.dataset / item.name
        if (item.dataset, item.name) in present:
            skipped.append(target / RECORD_FILE)
            continue
        _copy_record(item, target)
        present.add((item.dataset, item.name))
        added.append(target / RECORD_FILE)
        logger.debug("added %s as %s", item.path, target / RECORD_FILE)
    return added, skipped


def _copy_record(item: StoredRecord, target: Path) -> None:
    """Copy the record (and its per-query file) into ``target`` through a temporary folder."""
    staging = target.parent / f".{target.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(item.path, staging / RECORD_FILE)
        if item.per_query_path is not None:
            shutil.copyfile(item.per_query_path, staging / item.per_query_path.name)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _first_of_each(records: list[StoredRecord]) -> list[StoredRecord]:
    """The records without repeats of one name (the same run given twice)."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for item in records:
        if (item.dataset, item.name) not in seen:
            seen.add((item.dataset, item.name))
            unique.append(item)
    return unique


def _check_unique(records: list[StoredRecord]) -> None:
    """Refuse two different records of one dataset, method, setting and seed."""
    owners: dict[tuple[Any, ...], StoredRecord] = {}
    for item in records:
        key = (item.dataset, item.method, item.setting, item.seed)
        other = owners.setdefault(key, item)
        if other is not item and other.name != item.name:
            raise RecordError(
                f"`{item.path}` must be the only record of {item.method} on {item.dataset} "
                f"with seed {item.seed} in its setting, but `{other.path}` is one too; remove "
                "the one that is replaced from the results folder"
            )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
