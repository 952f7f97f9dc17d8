"""PyTorch Lightning's checkpoints as expman checkpoints: one callback in ``Trainer``.

``pip install expman[lightning]``. :class:`ExpmanCheckpoint` is a
``ModelCheckpoint`` (same arguments, same triggers) whose checkpoints are
written through a :class:`~expman.CheckpointManager` (the run's directory
under ``expman run``) by the PyTorch adapter: HDF5, atomic, no pickle, and
restored only into the same model and optimizers.

Example:
    >>> import lightning.pytorch as pl  # doctest: +SKIP
    >>> from expman.lightning import ExpmanCheckpoint  # doctest: +SKIP
    >>> trainer = pl.Trainer(max_epochs=10,  # doctest: +SKIP
    ...                      callbacks=[ExpmanCheckpoint(monitor="val_loss", save_top_k=3)])
    >>> trainer.fit(model, ckpt_path="last")  # doctest: +SKIP

What is written: the LightningModule's tensors as the model (the
architecture guard compares them, tied tensors included), the random
generators, and everything else of Lightning's checkpoint dict (epoch, global
step, loops, callbacks' states, optimizer and scheduler states, precision
plugin state, hyperparameters) as the extra state ``lightning``: typed JSON
that gives back its exact Python types, with its tensors as datasets
(docs/lightning.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
from lightning.pytorch.loggers import Logger
from lightning.pytorch.trainer.states import TrainerFn

import expman.torch
from expman._errors import UsageError
from expman.checkpoints._architecture import Architecture
from expman.checkpoints._catalog import checkpoint_filename
from expman.checkpoints._context import manager_defaults
from expman.checkpoints._format import read_metadata
from expman.checkpoints._manager import CheckpointManager
from expman.checkpoints._policy import CheckpointPolicy
from expman.experiments._runtime import log_metrics
from expman.torch._layout import ModelParts, class_name, is_model, optimizer_names

__all__ = ["ExpmanCheckpoint", "ExpmanLogger", "retention_policy"]

# The extra state that holds Lightning's checkpoint dict, less the model.
STATE = "lightning"
# What the guard compares before a resume writes anything: each optimizer's
# class and parameter groups (by the model's parameter names), each scheduler's class.
_OPTIMIZERS = "expman_optimizers"
_SCHEDULERS = "expman_lr_schedulers"


def retention_policy(
    *,
    monitor: str | None,
    mode: str,
    save_top_k: int,
    run_policy: Mapping[str, Any] | None = None,
) -> CheckpointPolicy:
    """ModelCheckpoint's ``monitor``/``mode``/``save_top_k`` as expman's retention.

    Lightning decides when to save, so the policy saves nothing on its own.
    With a ``monitor``, the ``save_top_k`` best by it are kept (all for -1)
    besides the newest; without, the ``save_top_k`` newest (all for -1). The
    newest is always kept, so ``save_last`` is implied. ``keep_every_hours``
    comes from the run's policy (``expman.toml``).
    """
    keep_all = save_top_k == -1
    return CheckpointPolicy(
        save_every_secs=None,
        save_every_steps=None,
        save_first_step=False,
        keep_max=None if keep_all else (max(save_top_k, 1) if monitor is None else 1),
        keep_every_hours=(run_policy or {}).get("keep_every_hours"),
        keep_best=max(save_top_k, 0) if monitor is not None else 0,
        best_metric=monitor,
        best_mode="max" if mode == "max" else "min",
    )


class ExpmanLogger(Logger):
    """Lightning's logged metrics (``self.log``) to :func:`expman.log_metrics`.

    Lightning numbers a batch's metrics from 0 (its batch index across
    epochs); expman logs them at the step a checkpoint taken right after that
    batch has (``global_step``), one more, so that a checkpoint's metrics and
    the log agree, as with ``expman.log_metrics(step + 1, ...)`` in a loop.
    """

    @property
    def name(self) -> str:
        return "expman"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are the run's ``params`` (``expman.toml``): nothing to log."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        log_metrics(int(step or 0) + 1, **{name: float(value) for name, value in metrics.items()})


class ExpmanCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose files are expman checkpoints.

    Takes ``ModelCheckpoint``'s triggers and retention arguments; ``dirpath``
    and ``filename`` are expman's: ``ckpt-<global step>.h5`` in the manager's
    directory. ``monitor``/``mode``/``save_top_k`` become the manager's
    retention (:func:`retention_policy`) unless ``manager`` is given.
    ``trainer.fit(ckpt_path="last")`` resumes from the manager's latest
    checkpoint (under ``expman run --from-checkpoint``, the other
    experiment's), after checking the model's tensors, the optimizers and
    the LR schedulers against it: any difference raises
    :class:`~expman.ArchitectureMismatchError` before anything is written.

    Args:
        manager: where and what to keep. None: a manager on the run's
            directory under ``expman run``, else on ``dirpath``, else on
            ``<default_root_dir>/checkpoints``.
        log_metrics: add an :class:`ExpmanLogger` to the trainer's loggers.
    """

    def __init__(
        self,
        *,
        manager: CheckpointManager | None = None,
        dirpath: str | Path | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        save_weights_only: bool = False,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        verbose: bool = False,
        log_metrics: bool = True,
    ) -> None:
        super().__init__(
            monitor=monitor,
            mode=mode,
            save_top_k=save_top_k,
            save_last=save_last,
            save_weights_only=save_weights_only,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=save_on_train_epoch_end,
            verbose=verbose,
            enable_version_counter=False,
        )
        self._manager = manager
        self._requested_dir = None if dirpath is None else Path(dirpath)
        self._log_metrics = log_metrics

    def manager(self, trainer: Trainer) -> CheckpointManager:
        """The manager the checkpoints go through (made on first use)."""
        if self._manager is None:
            run = manager_defaults()
            directory = self._requested_dir
            if directory is None and run is None:
                directory = Path(trainer.default_root_dir) / "checkpoints"
            policy = retention_policy(
                monitor=self.monitor,
                mode=self.mode,
                save_top_k=self.save_top_k,
                run_policy=run.policy if run is not None else None,
            )
            self._manager = CheckpointManager(directory, policy=policy)
        return self._manager

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        manager = self.manager(trainer)
        self.dirpath = str(manager.directory)
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, _CheckpointIO):
            trainer.strategy.checkpoint_io = _CheckpointIO(trainer, manager, fallback=io)
        if self._log_metrics and not any(isinstance(x, ExpmanLogger) for x in trainer.loggers):
            trainer.loggers = [*trainer.loggers, ExpmanLogger()]

    def format_checkpoint_name(
        self,
        metrics: dict[str, torch.Tensor],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        """Every checkpoint of a step is one file, ``ckpt-<step>.h5`` ("last" included)."""
        assert self.dirpath is not None
        return str(Path(self.dirpath) / checkpoint_filename(int(metrics["step"])))

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        meta = self.manager(trainer).checkpoint_for_restore()
        return set() if meta is None else {str(meta.path)}

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """Nothing: the manager's retention deletes, after each new checkpoint is durable."""


class _CheckpointIO(CheckpointIO):
    """Lightning's checkpoint dicts to and from expman files (``.h5``); other paths as before."""

    def __init__(self, trainer: Trainer, manager: CheckpointManager, *, fallback: Any) -> None:
        self._trainer = trainer
        self._manager = manager
        self._fallback = fallback

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if not str(path).endswith(".h5"):
            self._fallback.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        step = int(checkpoint["global_step"])
        expected = self._manager.directory / checkpoint_filename(step)
        if Path(path).absolute() != expected:
            raise UsageError(
                f"expman writes the checkpoint of step {step} as {expected}, not {path}: "
                "save to that path, or to a path that does not end in .h5"
            )
        latest = self._manager.latest()
        if latest is not None and latest.step == step and latest.path == expected:
            return  # "last" and a top-k save of one step: one file
        module = self._trainer.lightning_module
        # The model's tensors are the model part of the file; None keeps the key's place.
        rest = {key: None if key == "state_dict" else value for key, value in checkpoint.items()}
        rest[_OPTIMIZERS] = [
            {"class": class_name(optimizer), "params": optimizer_names(module, optimizer)}
            for optimizer in self._trainer.optimizers
        ]
        rest[_SCHEDULERS] = [class_name(c.scheduler) for c in self._trainer.lr_scheduler_configs]
        metrics = {
            name: value
            for name, value in self._trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }
        expman.torch.save(
            self._manager, step, module, extra={STATE: rest}, metrics=metrics, force=True
        )

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not str(path).endswith(".h5"):
            loaded: dict[str, Any] = self._fallback.load_checkpoint(
                path, map_location=map_location, weights_only=weights_only
            )
            return loaded
        manager, step = self._source(Path(path).absolute())
        meta = manager.checkpoint_for_restore(step)
        assert meta is not None
        module = self._trainer.lightning_module
        state: dict[str, Any] = expman.torch.read_extra(manager, STATE, step=step)
        fitting = self._trainer.state.fn == TrainerFn.FITTING
        fresh_optimizers: list[Any] = []
        configs: list[Any] = []
        if fitting and not self._trainer.strategy.restore_checkpoint_after_setup:
            optimizers, configs = _init_optimizers_and_lr_schedulers(module)
            fresh_optimizers = optimizers
            lines = _optimizer_lines(state, module, optimizers, [c.scheduler for c in configs])
            if lines:
                parts = ModelParts.of(module)
                manager.check_architecture(
                    meta,
                    Architecture.of(parts.specs(), manager.model_config),
                    recorded=Architecture.of(
                        (s for s in meta.architecture.tensors if is_model(s.name)),
                        meta.architecture.config,
                    ),
                    state_differences=lines,
                )
        # Checks the model's tensors and ties, then writes them and the generators.
        expman.torch.restore(manager, module, step=step)
        report = manager.last_restore
        if report is not None and report.skipped and fresh_optimizers:
            # A partial restore: the optimizers and schedulers start fresh.
            state["optimizer_states"] = [o.state_dict() for o in fresh_optimizers]
            state["lr_schedulers"] = [c.scheduler.state_dict() for c in configs]
        state.pop(_OPTIMIZERS, None)
        state.pop(_SCHEDULERS, None)
        state["state_dict"] = module.state_dict()
        return state

    def _source(self, path: Path) -> tuple[CheckpointManager, int | None]:
        """The manager that reads ``path``, and the step to ask it for (None: its latest)."""
        latest = self._manager.checkpoint_for_restore()
        if latest is not None and latest.path == path:
            return self._manager, None
        step = read_metadata(path).step
        if path.parent == self._manager.directory:
            return self._manager, step
        return CheckpointManager(path.parent), step

    def remove_checkpoint(self, path: Any) -> None:
        if not str(path).endswith(".h5"):
            self._fallback.remove_checkpoint(path)

    def teardown(self) -> None:
        self._manager.wait()


def _optimizer_lines(
    state: Mapping[str, Any], module: torch.nn.Module, optimizers: list[Any], schedulers: list[Any]
) -> list[str]:
    """What differs between the checkpoint's optimizers and schedulers and the module's."""
    saved = state.get(_OPTIMIZERS, [])
    lines = []
    if len(saved) != len(optimizers):
        lines.append(f"optimizers: {len(saved)} in the checkpoint, {len(optimizers)} configured")
    for index, (before, optimizer) in enumerate(zip(saved, optimizers, strict=False)):
        if before["class"] != class_name(optimizer):
            lines.append(
                f"optimizer {index}: class checkpoint {before['class']} "
                f"vs optimizer {class_name(optimizer)}"
            )
        now = optimizer_names(module, optimizer)
        if len(before["params"]) != len(now):
            lines.append(
                f"optimizer {index}: {len(before['params'])} parameter groups in the "
                f"checkpoint, {len(now)} in the optimizer"
            )
        for group, (old, new) in enumerate(zip(before["params"], now, strict=False)):
            missing = [name for name in new if name not in old]
            unexpected = [name for name in old if name not in new]
            what = [f"missing from the checkpoint: {', '.join(missing)}"] if missing else []
            what += [f"not in the optimizer: {', '.join(unexpected)}"] if unexpected else []
            if old != new:
                lines.append(
                    f"optimizer {index}: parameter group {group}: "
                    + ("; ".join(what) or "the same parameters in another order")
                )
    saved_schedulers = state.get(_SCHEDULERS, [])
    for index, (before, scheduler) in enumerate(zip(saved_schedulers, schedulers, strict=False)):
        if before != class_name(scheduler):
            lines.append(
                f"lr_scheduler {index}: class checkpoint {before} vs scheduler "
                f"{class_name(scheduler)}"
            )
    if len(saved_schedulers) != len(schedulers):
        lines.append(
            f"lr_schedulers: {len(saved_schedulers)} in the checkpoint, "
            f"{len(schedulers)} configured"
        )
    return lines
