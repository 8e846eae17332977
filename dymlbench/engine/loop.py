"""The training loop: one :class:`Trainer` per run, the same for every method.

One optimiser step (see :mod:`dymlbench.method` for the method's side):

1. the learning rates of the step (:class:`dymlbench.engine.optim.LRSchedule`);
2. the batch to the device, normalised (uint8 to float32), channels-last if asked;
3. the EMA teacher's output on the same images, without gradients, when the method has one;
4. the network's training step (the backbone under bf16 autocast on CUDA, the method's heads
   and loss in float32), through DDP when there are several processes;
5. backward; the loss and the method's logs averaged over ranks in one collective and checked:
   a NaN or infinite loss stops the run with the step and the last finite values;
6. the gradients of frozen groups dropped (the warm-up), the global norm clipped, the step;
7. the teacher's update, then the method's ``after_step`` hook.

After each epoch: the method's ``after_epoch`` hook, the validation every ``engine.eval_every``
epochs (online and EMA networks), then a checkpoint. Randomness: the global generators are
seeded from ``(seed, epoch, rank)`` at the start of every epoch and each training image's
augmentation from its own seed (:mod:`dymlbench.engine.batches`), so a resumed run repeats an
uninterrupted one exactly on CPU; every generator's state is still saved in the checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dymlbench.config import ConfigError, RunConfig
from dymlbench.data import BatchNormalize, DyMLDataset
from dymlbench.engine import distributed
from dymlbench.engine.batches import derive_seed, train_loader
from dymlbench.engine.distributed import DistContext
from dymlbench.engine.evaluate import benchmark_item_ids, evaluate_test, evaluate_validation
from dymlbench.engine.logs import RunLogger, format_metrics
from dymlbench.engine.optim import (
    LRSchedule,
    build_optimizer,
    drop_frozen_gradients,
    freeze_batchnorm,
    frozen_groups,
)
from dymlbench.engine.records import Initialisation, file_sha256
from dymlbench.evaluation import EvaluationReport
from dymlbench.hierarchy import Hierarchy
from dymlbench.method import Network, Progress
from dymlbench.models import EMATeacher, create_backbone, feature_dim, load_weights
from dymlbench.registry import get_method

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout; a checkpoint of another version is not resumed."""

SHOWN_METRICS = ("overall/map", "overall/recall@1", "overall/asi", "multi/hap")
"""The metrics of the log line after an evaluation."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before the optimiser step.

    Attributes:
        epoch: the epoch of the step, from 0.
        step: the global index of the step, from 0.
        values: the step's loss and logs (averaged over ranks).
        last_finite: the last step's values when they were finite, else ``None``.
    """

    def __init__(
        self,
        *,
        epoch: int,
        step: int,
        values: Mapping[str, float],
        last_finite: Mapping[str, float] | None,
    ) -> None:
        self.epoch = epoch
        self.step = step
        self.values = dict(values)
        self.last_finite = None if last_finite is None else dict(last_finite)
        last = (
            "no earlier step" if last_finite is None else f"step {step - 1}: {_show(last_finite)}"
        )
        super().__init__(
            f"the loss must stay finite, but it is {values['loss']} at step {step} (epoch "
            f"{epoch + 1}) with {_show(values)}; the last finite values were at {last}. Lower "
            "`optim.lr`, set `optim.grad_clip`, or check the method's loss"
        )


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """The device of ``engine.device``: ``auto`` takes CUDA when there is one.

    Raises:
        ConfigError: ``cuda`` on a machine without CUDA (with the flag that fixes it).
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "engine.device",
            "must be 'cpu' or 'auto' on a machine without CUDA, but got 'cuda'; pass "
            "--device cpu (or --device auto)",
        )
    return torch.device("cuda", local_rank)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global generator's state, as tensors, numbers and tuples (``weights_only``-safe)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_network(
    config: RunConfig, hierarchy: Hierarchy, *, device: torch.device, total_steps: int
) -> tuple[Network, EMATeacher | None, Initialisation]:
    """The backbone, the method and its EMA teacher, initialised as the config says.

    ``model.pretrained`` is ``scratch``, ``imagenet`` or a checkpoint file: the online
    backbone takes the file's weights (a DINO checkpoint's student); when the method has a
    teacher and the file is a DINO checkpoint, the teacher's backbone takes its teacher.
    Call :func:`seed_everything` first: the random initialisation follows the global seed.

    Args:
        config: the run configuration.
        hierarchy: the training split's hierarchy (the method's class counts).
        device: where the network goes.
        total_steps: optimiser steps of the run (the teacher's momentum schedule).

    Returns:
        The network on ``device``, its teacher (``None`` when the method declares none) and
        the initialisation for the record.
    """
    model = config.model
    pretrained = model.pretrained
    from_file = pretrained not in ("scratch", "imagenet")
    backbone = create_backbone(
        name=model.backbone,
        pretrained="scratch" if from_file else pretrained,
        channels_last=model.channels_last,
    )
    report = load_weights(backbone, pretrained, which="student") if from_file else None

    method = get_method(config.method_name)(
        config=config.method,
        feature_dim=feature_dim(backbone),
        embedding_dim=model.embedding_dim,
        hierarchy=hierarchy,
    )
    amp = config.optim.amp == "bf16" and device.type == "cuda"
    network = Network(
        backbone=backbone, method=method, autocast_dtype=torch.bfloat16 if amp else None
    ).to(device)

    spec = method.needs.teacher
    teacher = None
    teacher_loaded = False
    if spec is not None:
        teacher = EMATeacher(network, spec=spec, total_steps=total_steps)
        if report is not None and report.kind == "dino":
            load_weights(teacher.module.backbone, pretrained, which="teacher")
            teacher_loaded = True
    elif config.engine.report_network == "ema":
        raise ConfigError(
            "engine.report_network",
            f"must be 'online' for method {config.method_name!r}, which has no EMA teacher, "
            "but got 'ema'",
        )

    if report is None:
        initialisation = Initialisation(kind=pretrained)
    else:
        path = Path(pretrained)
        initialisation = Initialisation(
            kind=report.kind,
            path=str(path.resolve()),
            sha256=file_sha256(path),
            teacher_from_checkpoint=teacher_loaded,
        )
    return network, teacher, initialisation


@dataclasses.dataclass(kw_only=True)
class History:
    """What a run has measured so far; saved in checkpoints and in ``metrics.json``.

    Attributes:
        train: one entry per epoch: ``epoch``, mean ``loss`` and logs, ``images_per_second``,
            ``lr`` per group, ``step_losses``.
        validation: one entry per evaluation: ``epoch`` and, per network, the metrics.
        test: per network, the test report's JSON form (at the end of the run).
    """

    train: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    validation: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    test: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"train": self.train, "validation": self.validation, "test": self.test}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """Build from :meth:`to_dict`."""
        return cls(
            train=list(data["train"]), validation=list(data["validation"]), test=dict(data["test"])
        )


class Trainer:
    """Everything one run trains and evaluates, on one process of the run.

    Args:
        config: the resolved run configuration.
        dataset: the loaded dataset (its train split is trained on).
        device: this process's device.
        context: where this process stands among the run's processes.
        run_logger: TensorBoard and the progress bar (inactive on ranks other than 0).
    """

    def __init__(
        self,
        *,
        config: RunConfig,
        dataset: DyMLDataset,
        device: torch.device,
        context: DistContext,
        run_logger: RunLogger,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.device = device
        self.context = context
        self.log = run_logger
        optim, engine = config.optim, config.engine

        self.loader, self.sampler = train_loader(
            dataset.train,
            config.data,
            classes_per_batch=optim.classes_per_batch,
            images_per_class=optim.images_per_class,
            seed=engine.seed,
            rank=context.rank,
            world_size=context.world_size,
            num_workers=engine.num_workers,
            pin_memory=device.type == "cuda",
        )
        self.steps_per_epoch = len(self.sampler)
        self.schedule = LRSchedule(optim, steps_per_epoch=self.steps_per_epoch)
        seed_everything(engine.seed)
        self.network, self.teacher, self.initialisation = build_network(
            config,
            dataset.train.hierarchy,
            device=device,
            total_steps=optim.epochs * self.steps_per_epoch,
        )
        self.optimizer = build_optimizer(
            backbone=self.network.backbone, method=self.network.method, optim=optim
        )
        self.normalize = BatchNormalize().to(device)
        self.memory_format = (
            torch.channels_last if config.model.channels_last else torch.contiguous_format
        )

        self.model: torch.nn.Module = self.network
        if context.distributed and device.type == "cuda":
            # Batch statistics over the global batch, as one GPU would see them; the conversion
            # keeps the parameter objects, so the optimiser built above still holds them. (On
            # CPU, torch's synchronised batch norm is unavailable: each rank normalises alone.)
            self.network.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
                self.network.backbone
            )
        if context.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.epochs_done = 0
        self.global_step = 0
        self.history = History()
        self._item_ids: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        logger.info(
            "%s on %s: %s backbone (%s), %d steps per epoch of %d images over %d process(es)",
            config.method_name,
            config.data.dataset,
            config.model.backbone,
            self.initialisation.kind,
            self.steps_per_epoch,
            optim.batch_size,
            context.world_size,
        )

    @property
    def networks(self) -> dict[str, Network]:
        """The networks evaluated: ``online``, and ``ema`` when there is a teacher."""
        networks = {"online": self.network}
        if self.teacher is not None:
            networks["ema"] = self.teacher.module
        return networks

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch; returns its entry of :attr:`History.train`."""
        epoch, n_epochs = self.epochs_done, self.config.optim.epochs
        seed_everything(derive_seed(self.config.engine.seed, epoch, self.context.rank))
        self.sampler.set_epoch(epoch)
        self.network.train()
        if self.config.optim.freeze_batchnorm:
            freeze_batchnorm(self.network.backbone)
        frozen = frozen_groups(self.config.optim, epoch)

        self.log.start_epoch(epoch, n_epochs, self.steps_per_epoch)
        sums: dict[str, float] = {}
        step_losses: list[float] = []
        last: dict[str, float] | None = None
        for batch in self.loader:
            progress = Progress(
                epoch=epoch,
                step=self.global_step,
                n_epochs=n_epochs,
                steps_per_epoch=self.steps_per_epoch,
            )
            values = self._step(batch, progress, frozen, last)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            step_losses.append(values["loss"])
            last = values
            self.log.scalars(values, step=self.global_step, prefix="train/")
            self.log.step(values["loss"], len(batch["images"]) * self.context.world_size)
            self.global_step += 1
        images_per_second = self.log.end_epoch()

        self.network.method.after_epoch(
            Progress(
                epoch=epoch,
                step=self.global_step,
                n_epochs=n_epochs,
                steps_per_epoch=self.steps_per_epoch,
            )
        )
        self.epochs_done += 1
        lrs = {group["name"]: group["lr"] for group in self.optimizer.param_groups}
        self.log.scalars(lrs, step=self.global_step, prefix="train/lr/")
        n_steps = max(len(step_losses), 1)
        entry = {
            "epoch": self.epochs_done,
            **{key: value / n_steps for key, value in sums.items()},
            "images_per_second": images_per_second,
            "lr": lrs,
            "step_losses": step_losses,
        }
        self.history.train.append(entry)
        logger.info(
            "epoch %d/%d: loss %.4f, %.0f images/s%s",
            self.epochs_done,
            n_epochs,
            entry.get("loss", math.nan),
            images_per_second,
            f" (frozen: {', '.join(sorted(frozen))})" if frozen else "",
        )
        return entry

    def _step(
        self,
        batch: Mapping[str, Tensor],
        progress: Progress,
        frozen: frozenset[str],
        last: Mapping[str, float] | None,
    ) -> dict[str, float]:
        self.schedule.apply(self.optimizer, progress)
        images = self.normalize(batch["images"].to(self.device, non_blocking=True))
        images = images.contiguous(memory_format=self.memory_format)
        labels = batch["labels"].to(self.device, non_blocking=True)

        teacher_output = self.teacher_output(images)
        output = self.model(images, labels, progress=progress, teacher_output=teacher_output)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()

        names = ["loss", *output.logs]
        stacked = torch.stack(
            [
                torch.as_tensor(value, dtype=torch.float32, device=self.device).detach()
                for value in (output.loss, *output.logs.values())
            ]
        )
        reduced = distributed.all_reduce_mean(stacked).tolist()
        values = dict(zip(names, reduced, strict=True))
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(
                epoch=progress.epoch, step=progress.step, values=values, last_finite=last
            )

        drop_frozen_gradients(self.optimizer, frozen)
        if self.config.optim.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
        self.optimizer.step()
        if self.teacher is not None:
            self.teacher.update(self.network)
        self.network.method.after_step(progress)
        return values

    def teacher_output(self, images: Tensor) -> Tensor | None:
        """The EMA teacher's output for a training batch of normalised ``images``, without
        gradients; ``None`` for a method without a teacher."""
        if self.teacher is None:
            return None
        # Frozen batch norm holds in the teacher too: its statistics stay the running ones.
        batch_statistics = (
            self.teacher.spec.batchnorm == "batch" and not self.config.optim.freeze_batchnorm
        )
        with self.teacher.training_pass(batch_statistics=batch_statistics) as teacher:
            return teacher.teacher_output(images).detach()

    def _eval_options(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "batch_size": self.config.optim.batch_size,
            "num_workers": self.config.engine.num_workers,
            "channels_last": self.config.model.channels_last,
        }

    def validate(self) -> dict[str, dict[str, float]] | None:
        """Evaluate every network on the validation split (rank 0); ``None`` without one."""
        if self.dataset.validation is None or not self.context.is_main:
            return None
        results = {}
        for name, network in self.networks.items():
            report = evaluate_validation(
                network, self.dataset.validation, self.config.data, **self._eval_options()
            )
            results[name] = report.metrics
            self.log.scalars(report.metrics, step=self.global_step, prefix=f"val/{name}/")
            logger.info(
                "validation after epoch %d (%s): %s",
                self.epochs_done,
                name,
                format_metrics(report.metrics, SHOWN_METRICS),
            )
        self.network.train()
        if self.config.optim.freeze_batchnorm:
            freeze_batchnorm(self.network.backbone)
        self.history.validation.append({"epoch": self.epochs_done, **results})
        return results

    def test(self) -> dict[str, EvaluationReport]:
        """Evaluate every network on the test data (rank 0 only; call it once, at the end)."""
        if self._item_ids is None and self.dataset.benchmarks:
            self._item_ids = benchmark_item_ids(self.dataset)
        reports = {}
        for name, network in self.networks.items():
            report = evaluate_test(
                network,
                self.dataset,
                item_ids=self._item_ids,
                mode=self.config.engine.eval_mode,
                **self._eval_options(),
            )
            reports[name] = report
            self.history.test[name] = report.to_dict()
            self.log.scalars(report.metrics, step=self.global_step, prefix=f"test/{name}/")
            logger.info("test (%s): %s", name, format_metrics(report.metrics, SHOWN_METRICS))
        return reports

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and plain values only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epochs_done": self.epochs_done,
            "global_step": self.global_step,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "schedule": self.schedule.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "history": self.history.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`.

        Raises:
            ValueError: a checkpoint of another format or of another network.
        """
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"the checkpoint must have format {CHECKPOINT_FORMAT}, but got "
                f"{state.get('format')!r}; it was written by another dymlbench version"
            )
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.teacher is not None:
            if state["teacher"] is None:
                raise ValueError("the checkpoint must hold the EMA teacher, but it has none")
            self.teacher.load_state_dict(state["teacher"])
        self.schedule.load_state_dict(state["schedule"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.epochs_done = int(state["epochs_done"])
        self.global_step = int(state["global_step"])
        self.history = History.from_dict(state["history"])


def _show(values: Mapping[str, float]) -> str:
    return ", ".join(f"{key} {value:.6g}" for key, value in values.items())
