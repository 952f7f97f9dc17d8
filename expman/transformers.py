"""Hugging Face's ``Trainer`` saving and resuming through expman.

``pip install expman[transformers]``. :class:`ExpmanTrainer` is a
``transformers.Trainer`` whose checkpoints are expman checkpoints, written by
the PyTorch adapter at the trainer's save steps: the model (tied embeddings
once), the optimizer, the LR scheduler, the fp16 GradScaler, the random
generators and the trainer's state, in one HDF5 file, guarded on resume. :class:`ExpmanCallback`
(added by the trainer) logs the trainer's metrics with ``expman.log_metrics``.

Example:
    >>> from expman.transformers import ExpmanTrainer  # doctest: +SKIP
    >>> trainer = ExpmanTrainer(model=model, args=args, train_dataset=data)  # doctest: +SKIP
    >>> trainer.train(resume_from_checkpoint=True)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

import expman.torch
from expman.checkpoints._catalog import checkpoint_filename
from expman.checkpoints._context import manager_defaults
from expman.checkpoints._manager import CheckpointManager
from expman.checkpoints._policy import CheckpointPolicy
from expman.experiments._runtime import log_metrics
from expman.torch._rng import restore_rng

__all__ = ["ExpmanCallback", "ExpmanTrainer", "retention_policy"]

_STATE = "trainer_state"
_SCALER = "scaler"
_RESUME_MARK = "expman-resume-"


def retention_policy(args: Any) -> CheckpointPolicy:
    """``save_total_limit`` and ``load_best_model_at_end`` as expman's retention.

    The trainer decides when to save (``save_strategy``, ``save_steps``).
    ``save_total_limit`` newest are kept (all when None); with
    ``load_best_model_at_end``, also the best by ``metric_for_best_model``.
    """
    best = bool(args.load_best_model_at_end and args.metric_for_best_model)
    metric = args.metric_for_best_model
    if best and not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    return CheckpointPolicy(
        save_every_secs=None,
        save_every_steps=None,
        save_first_step=False,
        keep_max=args.save_total_limit or None,
        keep_best=1 if best else 0,
        best_metric=metric if best else None,
        best_mode="max" if best and args.greater_is_better else "min",
    )


class ExpmanCallback(TrainerCallback):
    """The trainer's logs (loss, learning rate, eval metrics) to :func:`expman.log_metrics`."""

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
    ) -> None:
        numbers = {
            name: float(value)
            for name, value in (logs or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        if numbers:
            log_metrics(int(state.global_step), **numbers)


class ExpmanTrainer(Trainer):
    """A ``transformers.Trainer`` whose checkpoints go through a :class:`~expman.CheckpointManager`.

    Checkpoints are written at the trainer's save steps as
    ``ckpt-<global step>.h5`` in the manager's directory (the run's under
    ``expman run``, else ``<output_dir>/checkpoints``); no ``checkpoint-N``
    folders, no pickle. ``save_total_limit`` and ``load_best_model_at_end``
    become the manager's retention (:func:`retention_policy`).
    ``train(resume_from_checkpoint=True)`` resumes from the manager's latest
    checkpoint (or starts from scratch when there is none), after checking
    the model, optimizer and scheduler against it.

    Args:
        manager: where and what to keep; None: as above.
    """

    def __init__(self, *args: Any, manager: CheckpointManager | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if manager is None:
            directory = (
                None if manager_defaults() else Path(self.args.output_dir or ".") / "checkpoints"
            )
            manager = CheckpointManager(directory, policy=retention_policy(self.args))
        self.manager = manager
        if not any(isinstance(c, ExpmanCallback) for c in self.callback_handler.callbacks):
            self.add_callback(ExpmanCallback())
        self._resuming = False
        self._resume_best: str | None = None

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``resume_from_checkpoint=True``: from the latest expman checkpoint, if any."""
        kwargs.update(trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)
        if resume_from_checkpoint is not True:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        meta = self.manager.checkpoint_for_restore()
        if meta is None:
            return super().train(**kwargs)
        # The latest checkpoint, as checkpoint_for_restore() says: this run's, or
        # under --from-checkpoint the other experiment's (step=None finds both).
        self._resuming = True
        state = expman.torch.read_extra(self.manager, _STATE)
        # The trainer drops a best checkpoint that is not a folder (with a
        # warning); ours is a file, set again once the state is loaded.
        self._resume_best = state.pop("best_model_checkpoint", None)
        # The trainer reads its state from a folder: a JSON file, nothing else.
        with tempfile.TemporaryDirectory(prefix=_RESUME_MARK) as folder:
            text = json.dumps(state, allow_nan=True)
            (Path(folder) / "trainer_state.json").write_text(text, encoding="utf-8")
            try:
                return super().train(resume_from_checkpoint=folder, **kwargs)
            finally:
                self._resuming = False
                self._resume_best = None

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        step = int(self.state.global_step)
        best_step = self.state.best_global_step
        best = self.manager.directory / checkpoint_filename(best_step or 0)
        if best_step and (best_step == step or best.is_file()):
            # What load_best_model_at_end restores: kept by the retention's keep_best.
            self.state.best_model_checkpoint = str(best)
        metrics = {}
        for entry in self.state.log_history:
            metrics.update(
                {k: v for k, v in entry.items() if isinstance(v, int | float) and k != "step"}
            )
        extra: dict[str, Any] = {_STATE: _state_dict(self.state)}
        if not self.args.save_only_model:
            extra.update(self._scaler())
        expman.torch.save(
            self.manager,
            step,
            self._module(),
            None if self.args.save_only_model else self.optimizer,
            None if self.args.save_only_model else self.lr_scheduler,
            extra=extra,
            metrics=metrics,
            force=True,
        )

    def _ours(self, checkpoint: str | None) -> bool:
        return self._resuming and Path(str(checkpoint)).name.startswith(_RESUME_MARK)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not self._ours(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        # Ours: restored with the optimizer (it does not exist yet), after one check of all.

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self._ours(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        expman.torch.restore(
            self.manager,
            self._module(),
            self.optimizer,
            self.lr_scheduler,
            extra=self._scaler(),
            rng=False,
        )
        # The best checkpoint, if it is this run's (not another experiment's: --from-checkpoint).
        best = None if self._resume_best is None else Path(self._resume_best)
        if best is not None and best.parent == self.manager.directory and best.is_file():
            self.state.best_model_checkpoint = str(best)

    def _scaler(self) -> dict[str, Any]:
        """The mixed-precision GradScaler (fp16), as the extra state ``scaler``, if any."""
        scaler = getattr(self.accelerator, "scaler", None)
        return {} if scaler is None else {_SCALER: scaler}

    def _load_scaler(self, checkpoint: str | None) -> None:
        if not self._ours(checkpoint):  # ours: restored with the optimizer, above
            super()._load_scaler(checkpoint)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if not self._ours(checkpoint):
            super()._load_rng_state(checkpoint)
            return
        meta = self.manager.checkpoint_for_restore()
        assert meta is not None
        names = [
            t.name for t in meta.tensors if t.name.startswith("rng/") and "rank/" not in t.name
        ]
        values = self.manager.read(meta, names=names)
        restore_rng({name.removeprefix("rng/"): value for name, value in values.items()})

    def _load_best_model(self) -> None:
        step = self.state.best_global_step
        if not step:
            return
        expman.torch.restore(self.manager, self._module(), step=step, rng=False)

    def _module(self) -> torch.nn.Module:
        assert isinstance(self.model, torch.nn.Module)
        return self.model


def _state_dict(state: Any) -> dict[str, Any]:
    """The trainer's state as the JSON it writes itself (``trainer_state.json``)."""
    found: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(state), allow_nan=True))
    return found
