"""Optuna studies over a search space: storages, the worker loop, and views of a study.

One trial is one run of the engine (:func:`dymlbench.engine.train`) on the class-disjoint
validation split (``data.val_fraction > 0``), in ``<output>/trials/trial-NNNN``; the objective
(``overall/map`` by default, a key of the validation metrics of ``engine.report_network``) is
reported after every validation pass, so that the pruner can stop a bad trial, and the value of
the last pass is the trial's value (the study maximises it). A trial never reads the test data
(``train(..., sweep=...)``), and its record says it is a sweep trial.

Storages (``--storage``):

- none: SQLite in the output folder, ``sqlite:///<output>/study.db``;
- any SQLAlchemy URL Optuna's RDB storage takes; ``postgresql://`` is read as
  ``postgresql+psycopg://`` (psycopg 3, the ``postgres`` extra), so that workers on several
  machines share one study;
- ``journal:PATH``: an Optuna journal file, for workers on one shared file system.

SQLite serves one worker at a time: a worker holds an exclusive lock on ``<db>.lock`` while it
runs, and a second worker on the same file is refused with what to use instead (the lock dies
with its process, so a killed worker's successor takes it at once). RDB storages run with
heartbeats: a trial whose worker stopped beating for the grace period is marked failed and
queued again, with the same parameters, for the next worker to take (Optuna's
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`, at most :data:`MAX_RETRY` times).
Optuna's journal storage has no heartbeats: a dead worker's trial stays ``RUNNING`` there.

Budget. ``n_trials`` is the study's total over all its workers: trials that finished (complete,
pruned, or failed by an error) plus those running or queued, not counting a trial whose worker
died and that was queued again (its retry counts). Each worker takes trials until the budget is
claimed, then (RDB storages, which have heartbeats) waits for the running ones of other workers
to finish, so that a retry of a dead worker's trial still finds a worker. Counting and creating
a trial is one step under a lock (a PostgreSQL advisory lock, a file lock for a journal), so
concurrent workers never exceed the budget.

Reproducibility. Trial ``k`` runs with ``engine.seed = derive_seed(study_seed, k) mod 2**31``
(:func:`trial_seed`; a retried trial keeps the seed of the trial it retries), and samples its
parameters with a TPE sampler seeded ``derive_seed(study_seed, k, 1) mod 2**32``: one worker's
sweep is the same on every rerun, and parallel workers never draw the same random parameters.

Under ``torchrun``, rank 0 alone opens the study, asks, reports and tells; it broadcasts each
trial's configuration to the other ranks, which train with it and wait for the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from dymlbench.config import RunConfig, apply_overrides
from dymlbench.sweep.space import SearchSpace

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = "overall/map"
STUDY_DB = "study.db"
TRIALS_DIR = "trials"
DEFAULT_VAL_FRACTION = 0.2
"""``data.val_fraction`` of a sweep whose configuration holds out no validation classes."""
DEFAULT_HEARTBEAT = 30
"""Seconds between two heartbeats of a running trial (RDB storages)."""
MAX_RETRY = 3
"""How many times a trial whose worker died is queued again."""

Pruner = Literal["median", "hyperband", "none"]

_OBJECTIVE = re.compile(
    r"(fine|middle|coarse|overall)/(map|map@r|recall@\d+|asi)|multi/(ndcg|hap|asi)"
)
_ATTRS = ("method", "dataset", "objective", "seed")


class SweepError(ValueError):
    """A sweep that cannot start or a study that cannot be read; the message says the fix."""


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The ``engine.seed`` of trial ``trial_number``: ``derive_seed(study_seed, k) mod 2**31``.

    Example:
        >>> trial_seed(0, 3) == trial_seed(0, 3) != trial_seed(0, 4)
        True
    """
    from dymlbench.engine.batches import derive_seed

    return derive_seed(study_seed, trial_number) % 2**31


def check_objective(objective: str) -> str:
    """Check that ``objective`` is a validation metric key (``overall/map``, ``fine/recall@1``).

    Raises:
        SweepError: not one of the keys of a leave-one-out evaluation.
    """
    if not _OBJECTIVE.fullmatch(objective):
        raise SweepError(
            "`--objective` must be a validation metric key such as overall/map, fine/map@r, "
            f"overall/recall@1, overall/asi or multi/hap, but got {objective!r}"
        )
    return objective


@dataclasses.dataclass(frozen=True, kw_only=True)
class StorageSpec:
    """Where a study lives.

    Attributes:
        kind: ``"sqlite"``, ``"rdb"`` (any other SQLAlchemy URL) or ``"journal"``.
        url: the SQLAlchemy URL (``sqlite``, ``rdb``) or the journal file's path.
        shown: the location without a password, for messages and logs.
    """

    kind: Literal["sqlite", "rdb", "journal"]
    url: str
    shown: str

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite storage (``None`` for an in-memory one)."""
        if self.kind != "sqlite":
            return None
        path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
        return None if path in ("", ":memory:") else Path(path)


def parse_storage(storage: str | None, *, output: Path) -> StorageSpec:
    """The storage of ``--storage`` (``None``: SQLite in ``output``).

    Example:
        >>> parse_storage("postgresql://me:secret@db/sweeps", output=Path(".")).url
        'postgresql+psycopg://me:secret@db/sweeps'
        >>> parse_storage("postgresql://me:secret@db/sweeps", output=Path(".")).shown
        'postgresql://me:***@db/sweeps'
    """
    if storage is None:
        path = (Path(output) / STUDY_DB).resolve()
        return StorageSpec(kind="sqlite", url=f"sqlite:///{path}", shown=f"sqlite:///{path}")
    if storage.startswith("journal:"):
        path = storage.removeprefix("journal:")
        if not path:
            raise SweepError("`--storage journal:PATH` must name a file, but got no path")
        return StorageSpec(kind="journal", url=str(Path(path).expanduser()), shown=storage)
    scheme, sep, rest = storage.partition("://")
    if not sep or not scheme:
        raise SweepError(
            "`--storage` must be an RDB URL (postgresql://user:password@host/db, "
            f"sqlite:///path.db) or journal:PATH, but got {storage!r}"
        )
    shown = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", storage)
    if scheme == "postgresql":  # SQLAlchemy's default driver differs between versions
        storage = f"postgresql+psycopg://{rest}"
    kind = "sqlite" if scheme.startswith("sqlite") else "rdb"
    return StorageSpec(kind=kind, url=storage, shown=shown)


def open_storage(
    spec: StorageSpec, *, heartbeat: int | None = None, grace_period: int | None = None
) -> BaseStorage:
    """Open the storage; with ``heartbeat`` (RDB only), dead workers' trials are retried.

    Args:
        spec: from :func:`parse_storage`.
        heartbeat: seconds between heartbeats of a running trial; ``None`` for none (reading).
        grace_period: seconds without a heartbeat after which a trial is failed and queued
            again; ``None`` for twice ``heartbeat``.
    """
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec.url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec.url))
    if spec.sqlite_path is not None:
        spec.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if heartbeat is not None:
        options = {
            "heartbeat_interval": heartbeat,
            "grace_period": grace_period if grace_period is not None else 2 * heartbeat,
            "heartbeat_stale_trial_callback": _retry_callback(),
        }
    engine_kwargs = {"pool_pre_ping": True} if spec.kind == "rdb" else {}
    # Workers started together on a fresh database would race to create Optuna's tables.
    schema_lock = _advisory_lock(spec.url, "schema") if _is_postgres(spec) else _no_lock()
    with _quiet_optuna():
        try:
            with schema_lock:
                return optuna.storages.RDBStorage(spec.url, engine_kwargs=engine_kwargs, **options)
        except ImportError as error:
            raise SweepError(
                f"the storage {spec.shown} needs its database driver: {error}; for PostgreSQL "
                'install psycopg with `pip install -e ".[postgres]"`'
            ) from None


def _retry_callback() -> Any:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with _quiet_optuna():
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's experimental-feature warnings (heartbeats, retries), and its warning
    that heartbeats need ``Study.optimize``: the worker loop beats itself (:func:`_heartbeat`).
    """
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed", UserWarning)
        yield


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """The sweep's sampler: TPE, seeded per trial from ``seed`` and the trial number."""
    return PerTrialSeededSampler(seed)


def make_pruner(name: Pruner) -> optuna.pruners.BasePruner:
    """``median`` (Optuna's defaults), ``hyperband`` (resource: epochs) or ``none``."""
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"`--pruner` must be median, hyperband or none, but got {name!r}")


class PerTrialSeededSampler(optuna.samplers.BaseSampler):
    """A TPE sampler whose random state is a function of the study seed and the trial number.

    Optuna's samplers hold one random state per process, so two workers seeded alike would
    draw the same parameters; here trial ``k`` gets a TPE sampler of its own, seeded
    ``derive_seed(seed, k, 1) mod 2**32``, which reads the study's history as usual.

    Args:
        seed: the study seed.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._samplers: dict[int, optuna.samplers.TPESampler] = {}
        self._lock = threading.Lock()

    def _for(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        from dymlbench.engine.batches import derive_seed

        with self._lock:
            sampler = self._samplers.get(trial.number)
            if sampler is None:
                seed = derive_seed(self._seed, trial.number, 1) % 2**32
                with _quiet_optuna():
                    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
                self._samplers[trial.number] = sampler
            return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: Mapping[str, Any]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, name, distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: Any,
        values: Sequence[float] | None,
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        with self._lock:
            self._samplers.pop(trial.number, None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """Everything one worker of a sweep needs.

    Attributes:
        base: the resolved configuration every trial starts from (recipe, space file's fixed
            values, ``--set`` and the flags; ``data.val_fraction > 0``).
        space: the swept entries.
        n_trials: the study's budget over all its workers (see the module docstring).
        study_name: the study's name in the storage.
        storage: the storage (:func:`parse_storage`).
        output: this worker's folder: ``trials/`` (and the SQLite database by default).
        objective: the validation metric maximised.
        seed: the study seed.
        pruner: ``median``, ``hyperband`` or ``none``.
        timeout: stop taking new trials after this many seconds; ``None`` for no limit.
        heartbeat: seconds between heartbeats of a running trial.
        grace_period: seconds without a heartbeat before a trial is retried; ``None``: twice
            ``heartbeat``.
    """

    base: RunConfig
    space: SearchSpace
    n_trials: int
    study_name: str
    storage: StorageSpec
    output: Path
    objective: str = DEFAULT_OBJECTIVE
    seed: int = 0
    pruner: Pruner = "median"
    timeout: float | None = None
    heartbeat: int = DEFAULT_HEARTBEAT
    grace_period: int | None = None

    def __post_init__(self) -> None:
        check_objective(self.objective)
        if self.n_trials < 1:
            raise SweepError(f"`--trials` must be >= 1, but got {self.n_trials}")
        if self.heartbeat < 1 or (self.grace_period is not None and self.grace_period < 1):
            raise SweepError(
                "`--heartbeat` and the grace period must be whole seconds >= 1, but got "
                f"{self.heartbeat} and {self.grace_period}"
            )
        if self.base.data.val_fraction <= 0:
            raise SweepError(
                "a sweep must run on a validation split: `data.val_fraction` must be > 0, but "
                f"got {self.base.data.val_fraction}; pass `--val-fraction 0.2`"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSummary:
    """What one worker did: the trial numbers it ran, and the study's state when it stopped."""

    ran: tuple[int, ...]
    status: StudyStatus


def base_config(
    *,
    method: str,
    dataset: str,
    space_file: Path,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    val_fraction: float | None = None,
) -> tuple[RunConfig, SearchSpace]:
    """The configuration every trial starts from, and the space of what is swept.

    Order: the recipe, ``config_file``, the space file's fixed values, then ``overrides``
    (``--set`` and the flags), then ``data.val_fraction`` (``val_fraction``, else the
    configuration's, else :data:`DEFAULT_VAL_FRACTION`). A key that ``overrides`` sets is not
    swept even when the space file sweeps it (the command line wins, with a log line).

    Raises:
        ConfigError: from the configuration machinery, naming the key and where it came from.
        SpaceError: a bad space file (names the line).
    """
    from dymlbench.config import parse_assignment, resolve_config
    from dymlbench.sweep.space import load_space

    recipe = resolve_config(method=method, dataset=dataset, config_file=config_file)
    space = load_space(space_file, base=recipe)
    set_keys = {parse_assignment(text)[0] for text in overrides}
    decided = set_keys & {param.key for param in space.params}
    if decided:
        logger.info(
            "the command line sets %s, so the space file does not", ", ".join(sorted(decided))
        )
        space = space.without(decided)
    config = apply_overrides(recipe, space.fixed(), source=str(space_file))
    config = apply_overrides(config, list(overrides))
    fraction = val_fraction
    if fraction is None:
        fraction = config.data.val_fraction or DEFAULT_VAL_FRACTION
    config = apply_overrides(config, {"data.val_fraction": fraction}, source="--val-fraction")
    return config, space


def trial_config(
    base: RunConfig, space: SearchSpace, params: Mapping[str, Any], *, seed: int, source: str
) -> RunConfig:
    """``base`` with a trial's parameters and seed; a bad combination is a :class:`ConfigError`."""
    overrides = {**space.overrides(params), "engine.seed": seed}
    return apply_overrides(base, overrides, source=source)


def run_sweep(settings: SweepSettings) -> SweepSummary | None:
    """Run one worker of a sweep until the study's budget is spent (or ``timeout``).

    Under ``torchrun`` every rank calls this; rank 0 returns the summary, the others ``None``.

    Raises:
        SweepError: a storage or study that cannot take this worker (another worker on the
            same SQLite file, a study of another method, dataset, objective or seed).
    """
    from dymlbench.engine import distributed
    from dymlbench.engine.loop import resolve_device

    context = distributed.init_distributed(resolve_device(settings.base.engine.device).type)
    try:
        if not context.is_main:
            _follow()
            return None
        try:
            return _lead(settings)
        finally:
            distributed.broadcast_object(None)
    finally:
        distributed.shutdown_distributed(context)


def _lead(settings: SweepSettings) -> SweepSummary:
    with _single_worker_lock(settings.storage):
        storage = open_storage(
            settings.storage, heartbeat=settings.heartbeat, grace_period=settings.grace_period
        )
        study = open_study(settings, storage)
        heartbeat_on = settings.storage.kind != "journal"
        logger.info(
            "study %r in %s: %d trials wanted, %s",
            settings.study_name,
            settings.storage.shown,
            settings.n_trials,
            _counts_text(study),
        )
        started = time.monotonic()
        ran: list[int] = []
        while True:
            if settings.timeout is not None and time.monotonic() - started > settings.timeout:
                logger.info("the timeout of %g s is spent: no new trial", settings.timeout)
                break
            with _budget_lock(settings.storage, settings.study_name):
                with _quiet_optuna():
                    optuna.storages.fail_stale_trials(study)
                claimed, waiting, running = budget(study.get_trials(deepcopy=False))
                trial = None
                if waiting or claimed < settings.n_trials:
                    with _quiet_optuna():
                        trial = study.ask(settings.space.distributions())
            if trial is not None:
                _run_trial(study, storage, trial, settings)
                ran.append(trial.number)
                continue
            if running and heartbeat_on:
                # Another worker's trial may still die and come back as a retry: wait for it.
                time.sleep(settings.heartbeat)
                continue
            break
        status = study_status(study)
        logger.info(
            "worker done after %d trial(s); study %r: %s",
            len(ran),
            settings.study_name,
            _counts_text(study),
        )
        return SweepSummary(ran=tuple(ran), status=status)


def open_study(settings: SweepSettings, storage: BaseStorage) -> optuna.Study:
    """Create the study or join it; a study made for another sweep is refused.

    Raises:
        SweepError: the study's method, dataset, objective or seed differ from ``settings``.
    """
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        sampler=make_sampler(settings.seed),
        pruner=make_pruner(settings.pruner),
        direction="maximize",
        load_if_exists=True,
    )
    wanted = {
        "method": settings.base.method_name,
        "dataset": settings.base.data.dataset,
        "objective": settings.objective,
        "seed": settings.seed,
    }
    found = study.user_attrs
    for key in _ATTRS:
        if key in found and found[key] != wanted[key]:
            raise SweepError(
                f"the study {settings.study_name!r} in {settings.storage.shown} was made with "
                f"{key} {found[key]!r}, but this sweep has {wanted[key]!r}; choose another "
                "`--study` name, or the same settings"
            )
    if any(key not in found for key in _ATTRS):
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        study.set_user_attr("space", settings.space.to_dict())
    elif found.get("space") != settings.space.to_dict():
        logger.warning(
            "the search space differs from the one the study %r started with; its sampler "
            "will mix both",
            settings.study_name,
        )
    return study


def budget(trials: Sequence[FrozenTrial]) -> tuple[int, int, int]:
    """``(claimed, waiting, running)``: the trials that count against the budget.

    Claimed are the finished, running and queued trials, less each trial that died with its
    worker and was queued again (its retry counts instead).
    """
    retried = {
        trial.system_attrs["retry_history"][-1]
        for trial in trials
        if trial.system_attrs.get("retry_history")
    }
    counted = [trial for trial in trials if trial.number not in retried]
    waiting = sum(trial.state == TrialState.WAITING for trial in counted)
    running = sum(trial.state == TrialState.RUNNING for trial in counted)
    return len(counted), waiting, running


def _run_trial(
    study: optuna.Study, storage: BaseStorage, trial: optuna.Trial, settings: SweepSettings
) -> None:
    """Run one trial on this worker (rank 0), with heartbeats; record how it ended."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from dymlbench.engine import distributed, train

    number = trial.number
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    with _quiet_optuna():
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    seed = trial_seed(settings.seed, number if original is None else original)
    run_dir = (settings.output / TRIALS_DIR / f"trial-{number:04d}").resolve()
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("host", socket.gethostname())
    if original is not None:
        trial.set_user_attr("retry_of", original)
    logger.info(
        "trial %d%s: %s",
        number,
        "" if original is None else f" (a retry of trial {original})",
        ", ".join(f"{key}={value!r}" for key, value in trial.params.items()) or "no parameters",
    )

    network = settings.base.engine.report_network
    reported: list[float] = []
    pruned = False

    def on_validation(epoch: int, metrics: dict[str, dict[str, float]]) -> bool:
        nonlocal pruned
        values = metrics.get(network, {})
        if settings.objective not in values:
            raise SweepError(
                f"`--objective` must be one of the validation metrics, but "
                f"{settings.objective!r} is not among {', '.join(sorted(values))}"
            )
        reported.append(float(values[settings.objective]))
        trial.report(reported[-1], epoch)
        pruned = trial.should_prune()
        return pruned

    with _heartbeat(storage, trial, settings):
        try:
            source = f"trial {number} of study {settings.study_name!r}"
            config = trial_config(
                settings.base, settings.space, trial.params, seed=seed, source=source
            )
            trial.set_user_attr("config", config.to_dict())
            marker = {
                "study": settings.study_name,
                "trial": number,
                "objective": settings.objective,
            }
            distributed.broadcast_object(
                {"config": config.to_dict(), "run_dir": str(run_dir), "sweep": marker}
            )
            train(config, output_dir=run_dir, on_validation=on_validation, sweep=marker)
        except SweepError as error:
            trial.set_user_attr("error", str(error))
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as error:  # a failed trial is recorded, and the sweep goes on
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            study.tell(trial, state=TrialState.FAIL)
            logger.warning("trial %d failed: %s: %s", number, type(error).__name__, error)
            return

    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        logger.info("trial %d pruned at %s %.4f", number, settings.objective, reported[-1])
    elif not reported:
        trial.set_user_attr("error", "the run reported no validation metrics")
        study.tell(trial, state=TrialState.FAIL)
    else:
        with _quiet_optuna():
            study.tell(trial, reported[-1])
        logger.info("trial %d: %s %.4f", number, settings.objective, reported[-1])


def _follow() -> None:
    """Ranks other than 0: train every configuration rank 0 broadcasts, until it sends none."""
    from dymlbench.engine import distributed, train

    while (message := distributed.broadcast_object(None)) is not None:
        config = RunConfig.from_dict(message["config"])
        try:
            train(
                config,
                output_dir=Path(message["run_dir"]),
                on_validation=_never_stop,
                sweep=message["sweep"],
            )
        except Exception as error:  # rank 0 records the trial's failure
            logger.debug("trial failed on this rank too: %s", error)


def _never_stop(epoch: int, metrics: dict[str, dict[str, float]]) -> bool:
    return False


@contextlib.contextmanager
def _heartbeat(
    storage: BaseStorage, trial: optuna.Trial, settings: SweepSettings
) -> Iterator[None]:
    """Record the trial's heartbeat every ``settings.heartbeat`` seconds while it runs."""
    record = getattr(storage, "record_heartbeat", None)
    if record is None or settings.storage.kind == "journal":
        yield
        return
    trial_id = trial._trial_id  # Optuna keys heartbeats by the storage's trial id
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.heartbeat):
            try:
                record(trial_id)
            except Exception as error:  # a lost beat is retried at the next interval
                logger.debug("heartbeat of trial %d failed: %s", trial.number, error)

    record(trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _single_worker_lock(storage: StorageSpec) -> Iterator[None]:
    """Hold ``<db>.lock`` for a SQLite storage; refuse a second worker on the same file."""
    path = storage.sqlite_path
    if path is None:
        yield
        return
    with _file_lock(path.with_name(f"{path.name}.lock"), blocking=False) as held:
        if not held:
            raise SweepError(
                f"another worker is already running on the SQLite study {storage.shown}; "
                "SQLite cannot serve parallel workers. Give every worker the same "
                "`--storage postgresql://user:password@host/db` (several machines) or "
                "`--storage journal:PATH` on a shared file system"
            )
        yield


@contextlib.contextmanager
def _budget_lock(storage: StorageSpec, study_name: str) -> Iterator[None]:
    """Make counting the budget and creating a trial one step among concurrent workers."""
    if storage.kind == "journal":
        with _file_lock(Path(f"{storage.url}.budget.lock"), blocking=True):
            yield
    elif _is_postgres(storage):
        with _advisory_lock(storage.url, f"study:{study_name}"):
            yield
    else:
        # SQLite has one worker; other databases: concurrent workers may overshoot by a trial.
        yield


def _is_postgres(storage: StorageSpec) -> bool:
    return storage.kind == "rdb" and storage.url.startswith("postgresql")


@contextlib.contextmanager
def _no_lock() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _advisory_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock named ``name``, held on a connection of its own."""
    import sqlalchemy

    digest = hashlib.blake2b(f"dymlbench-sweep:{name}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key}
                )
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path, *, blocking: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path``; yields whether it is held (``blocking``: always)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyStatus:
    """A study at a glance.

    Attributes:
        name: the study name.
        counts: trials per state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``,
            ``WAITING``), every state listed.
        best_number: the best complete trial's number, or ``None``.
        best_value: its objective value.
        best_params: its parameters (config values, lists decoded).
        best_run_dir: its run folder (on the machine that ran it).
        objective: the objective key, when the study records it.
        failures: ``(number, error)`` of the failed trials that recorded an error.
    """

    name: str
    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_run_dir: str | None
    objective: str | None
    failures: tuple[tuple[int, str], ...]


def study_status(study: optuna.Study) -> StudyStatus:
    """Counts by state, the best trial so far and where its run folder is."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    failures = tuple(
        (t.number, str(t.user_attrs["error"]))
        for t in trials
        if t.state == TrialState.FAIL and "error" in t.user_attrs
    )
    return StudyStatus(
        name=study.study_name,
        counts=counts,
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_params={} if best is None else _decoded_params(study, best),
        best_run_dir=None if best is None else best.user_attrs.get("run_dir"),
        objective=study.user_attrs.get("objective"),
        failures=failures,
    )


def _decoded_params(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    import json

    space = study.user_attrs.get("space", {})
    decoded = {}
    for key, value in trial.params.items():
        entry = space.get(key)
        is_list_choice = isinstance(entry, dict) and entry.get("type") == "categorical"
        if is_list_choice and isinstance(value, str) and value.startswith("["):
            value = json.loads(value)
        decoded[key] = value
    return decoded


def load_existing_study(storage: StorageSpec, study_name: str | None) -> optuna.Study:
    """Open a study to read it; ``study_name`` may be left out when the storage holds one.

    Raises:
        SweepError: no such study, or several and no name given (the message lists them).
    """
    if storage.sqlite_path is not None and not storage.sqlite_path.is_file():
        raise SweepError(
            f"the storage {storage.shown} must hold a study, but the file does not exist; "
            "pass the `--storage` (or `--output`) of the sweep"
        )
    opened = open_storage(storage)
    names = optuna.get_all_study_names(storage=opened)
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise SweepError(
                f"`--study` must name a study of {storage.shown}, which holds: {listed}"
            )
        study_name = names[0]
    if study_name not in names:
        listed = ", ".join(names) if names else "none"
        raise SweepError(
            f"`--study` must name a study of {storage.shown}, but got {study_name!r}; it "
            f"holds: {listed}"
        )
    return optuna.load_study(study_name=study_name, storage=opened)


def best_config(study: optuna.Study) -> tuple[RunConfig, FrozenTrial]:
    """The best trial's configuration made a final run's: every train class, seed 0.

    The trial's resolved configuration (stored with the trial, also its run folder's
    ``config.yaml``) with ``data.val_fraction = 0`` (the final run trains on every train class
    and is evaluated on the test data) and ``engine.seed = 0`` (``dymlbench run --seed N``
    picks the seeds of the final runs).

    Raises:
        SweepError: the study has no complete trial.
    """
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]
    if not complete:
        raise SweepError(
            f"the study {study.study_name!r} must have a complete trial for `best`, but it has "
            "none yet"
        )
    best = max(complete, key=lambda t: t.value)
    stored = best.user_attrs.get("config")
    if stored is None:
        run_dir = best.user_attrs.get("run_dir")
        config = RunConfig.read(Path(run_dir) / "config.yaml")
    else:
        config = RunConfig.from_dict(stored)
    config = apply_overrides(config, {"data.val_fraction": 0.0, "engine.seed": 0})
    return config, best


def write_best_config(study: optuna.Study, path: Path) -> tuple[RunConfig, FrozenTrial]:
    """Write :func:`best_config` as YAML that ``dymlbench run --config`` takes."""
    from dymlbench.engine.run import write_text_atomic

    config, best = best_config(study)
    objective = study.user_attrs.get("objective", "objective")
    header = (
        f"# Best trial {best.number} of the sweep study {study.study_name!r}: {objective} "
        f"{best.value:.6g} on the validation split.\n"
        "# Train on every train class and test: dymlbench run "
        f"{config.method_name} --dataset {config.data.dataset} --config {path.name} --seed N\n"
    )
    write_text_atomic(Path(path), header + config.to_yaml())
    return config, best


def write_plots(study: optuna.Study, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write the optimisation history, parameter importances and a contour as PNG files.

    The contour is of the two most important parameters. Uses matplotlib's current backend
    (the command line selects Agg).

    Returns:
        The files written, and a sentence for each plot left out (too few trials or
        parameters).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []

    def save(axes: Any, name: str) -> None:
        figure = np.asarray(axes, dtype=object).flat[0].figure
        figure.set_size_inches(9, 6)
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=100)
        plt.close(figure)
        written.append(out_dir / name)

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with _quiet_optuna():
        if not complete:
            return written, ["no plot: the study has no complete trial yet"]
        save(plots.plot_optimization_history(study), "history.png")

        names = sorted({name for trial in complete for name in trial.params})
        if len(complete) < 2 or not names:
            skipped.append(
                "no parameter importances or contour: they need two complete trials and a "
                f"swept parameter, but the study has {len(complete)} and {len(names)}"
            )
            return written, skipped
        evaluator = FanovaImportanceEvaluator(seed=0)
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (ValueError, RuntimeError) as error:
            skipped.append(f"no parameter importances or contour: {error}")
            return written, skipped
        save(
            plots.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)),
            "importances.png",
        )
        top = list(importances)[:2]
        if len(top) < 2:
            skipped.append(
                f"no contour: it needs two swept parameters, but the study has {len(top)}"
            )
        else:
            save(plots.plot_contour(study, params=top), "contour.png")
    return written, skipped


def _counts_text(study: optuna.Study) -> str:
    counts = study_status(study).counts
    shown = [f"{count} {state.lower()}" for state, count in counts.items() if count]
    return ", ".join(shown) or "no trials yet"
