"""CheckpointManager: save on a schedule, keep what the policy says, restore safely."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from expman._errors import (
    ArchitectureMismatchError,
    CheckpointExistsError,
    CheckpointIndexWarning,
    CheckpointNotFoundError,
    CheckpointSaveFailedError,
    CheckpointWriteError,
    LastStepNotSavedWarning,
    ModelConfigChangedWarning,
    PartialRestoreWarning,
    UnsupportedStateError,
)
from expman._text import refuse_control_characters
from expman.checkpoints._architecture import (
    Architecture,
    ArchitectureDiff,
    TensorSpec,
    compare_architectures,
)
from expman.checkpoints._catalog import CheckpointDirectory, CheckpointInfo, checkpoint_filename
from expman.checkpoints._context import (
    leave_refusal,
    manager_defaults,
    remember_directory,
    report_checkpoint_errors,
)
from expman.checkpoints._durable import (
    commit_file,
    describe_os_error,
    remove_stale_temporaries,
    temporary_path,
)
from expman.checkpoints._format import (
    PACK_MAX_BYTES,
    CheckpointMetadata,
    read_tensors,
    write_checkpoint,
)
from expman.checkpoints._gc import collector_paused
from expman.checkpoints._policy import CheckpointPolicy, select_kept
from expman.checkpoints._state import Leaf, Slot, fillable, state_leaves, state_slots, to_leaf
from expman.checkpoints._writer import BackgroundWriter

__all__ = ["CheckpointManager", "RestoreReport", "metric_values"]

logger = logging.getLogger("expman")


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did.

    Attributes:
        step: the restored checkpoint's step.
        path: the restored checkpoint file.
        restored: names of the tensors restored.
        skipped: one line per tensor left as initialised (partial restore only).
    """

    step: int
    path: Path
    restored: tuple[str, ...]
    skipped: tuple[str, ...]


class CheckpointManager:
    """Saves checkpoints on a schedule, keeps what the policy says, restores safely.

    Args:
        directory: the checkpoint directory, created if needed. None: a new
            temporary directory (logged, and exposed as :attr:`directory`).
        policy: when to save and what to keep; the Estimator's defaults.
        async_save: write on a background thread. Tensors are copied on the
            caller's thread; at most one save is in flight; a failed save is
            raised at the next call (or at :meth:`close`).
        experiment: recorded in every checkpoint, when known.
        code_commit: recorded in every checkpoint, when known.
        params: the run's parameters, recorded in every checkpoint.
        model_config: part of the architecture; a difference with identical
            tensors gives a :class:`ModelConfigChangedWarning` on restore.
        compression: None (contiguous, uncompressed), ``"gzip"`` or ``"lzf"``
            for the tensors that are not packed.
        pack_max_bytes: arrays of at most this many bytes (1 MiB) are packed
            into one dataset per dtype, which keeps checkpoints of thousands of
            small tensors fast; 0 gives every tensor its own dataset.

    Example:
        >>> import numpy as np, expman
        >>> state = {"w": np.zeros(3)}
        >>> ckpts = expman.CheckpointManager()  # doctest: +SKIP
        >>> start = ckpts.restore_latest(into=state)  # 0: nothing to restore yet
        >>> for step in range(start, 100):
        ...     state["w"] += 1
        ...     ckpts.save(step + 1, state, metrics={"loss": 1 / (step + 1)})
        >>> ckpts.close()  # saves step 100, the last one
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        policy: CheckpointPolicy | None = None,
        async_save: bool = False,
        experiment: str | None = None,
        code_commit: str | None = None,
        params: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None,
        compression: str | None = None,
        pack_max_bytes: int = PACK_MAX_BYTES,
    ) -> None:
        run = manager_defaults()
        self._temporary = directory is None and run is None
        if directory is None and run is not None:
            directory = run.directory
        elif directory is None:
            directory = tempfile.mkdtemp(prefix="expman-")
            logger.warning("Using temporary directory as checkpoint directory: %s", directory)
        self.directory = Path(directory).absolute()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointWriteError(
                f"cannot create checkpoint directory {self.directory}: {describe_os_error(error)}"
            ) from error
        in_run = run is not None and self.directory == run.directory.absolute()
        if policy is None and in_run and run is not None:
            policy = CheckpointPolicy.from_mapping(run.policy)
        self.policy = policy or CheckpointPolicy()
        self.experiment = experiment or (run.experiment if run else None)
        self.code_commit = code_commit or (run.code_commit if run else None)
        self.params = dict(params if params is not None else (run.params if run else {}))
        self._warm_start = run.warm_start if in_run and run else None
        self._partial_default = bool(in_run and run and run.partial)
        self.model_config = dict(model_config or {})
        self.compression = compression
        self.pack_max_bytes = pack_max_bytes
        self.last_restore: RestoreReport | None = None
        self._catalog = CheckpointDirectory(self.directory)
        self._writer = BackgroundWriter() if async_save else None
        self._staging: dict[str, Leaf] = {}  # by name: its staging buffer, as a leaf
        self._latest_step = max(self._catalog.steps(), default=None)
        self._started_empty = self._latest_step is None
        self._saved_any = False
        self._last_save_time = time.monotonic()
        self._pending: tuple[int, Any, Mapping[str, float], Callable[[], bool] | None] | None = None
        self._restored_step: int | None = None
        self._closed = False
        with contextlib.suppress(OSError):  # a read-only directory can still be restored
            remove_stale_temporaries(self.directory)
        remember_directory(self.directory)
        report_checkpoint_errors()

    @property
    def partial_by_default(self) -> bool:
        """Whether a restore without ``partial=`` is partial (``expman run --partial``)."""
        return self._partial_default

    # -- saving ---------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        *,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
        last: bool = False,
        current: Callable[[], bool] | None = None,
    ) -> bool:
        """Save ``state`` as ``step`` if the policy says so (or ``force``, or ``last``).

        Call it after every training step: it returns at once when the policy
        says not to save. ``state`` may be a function returning the state; it
        is called only when a checkpoint is written (so a framework adapter
        copies tensors off the device only then). Returns whether a checkpoint
        was written (scheduled, with ``async_save``). Saving the step this
        manager just restored writes nothing and returns False: that checkpoint
        holds it already.

        A checkpoint labelled step N holds the state as of step N. Pass
        ``last=True`` at the last step: it is written then, as the policy's
        "last step" rule asks. Otherwise :meth:`close` writes the last step
        not yet saved, from ``state`` as it is at close time; ``current``, if
        given, tells whether that is still the state of ``step`` (a framework
        adapter checks that no tensor changed), and when it says no, close
        writes nothing and warns (:class:`LastStepNotSavedWarning`).

        Metrics are numbers: ``int``, ``float``, numpy scalars, 0-d arrays and
        0-d tensors (converted with ``.item()``); anything else is refused here.

        Raises:
            UnsupportedStateError: a value or metric cannot be stored; nothing is written.
            CheckpointExistsError: ``step`` is not newer than the latest checkpoint,
                or another process committed it first.
            CheckpointWriteError: the write failed; earlier checkpoints are intact.
            CheckpointSaveFailedError: an earlier asynchronous save failed.
        """
        self._raise_background_error(wait=False)
        self._check_open()
        numbers = metric_values(metrics or {})
        refuse_control_characters(numbers, "metric")
        if step == self._restored_step == self._latest_step:
            # The checkpoint this manager just restored holds this step already (a loop
            # that evaluates and saves again at the step it resumed from).
            self._pending = None
            return False
        decide = force or last or self.due(step)
        self._pending = None if last else (step, state, numbers, current)
        if decide:
            self._save_now(step, state, numbers)
        return decide

    def due(self, step: int) -> bool:
        """Whether the policy would write ``save(step)`` now (without ``force``/``last``)."""
        return self.policy.should_save(
            step,
            now=time.monotonic(),
            last_save_time=self._last_save_time,
            first_in_directory=self._started_empty and not self._saved_any,
        )

    def _save_now(
        self,
        step: int,
        state: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        metrics: Mapping[str, float],
    ) -> None:
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        step = int(step)
        if self._latest_step is not None and step <= self._latest_step:
            raise CheckpointExistsError(
                f"cannot save step {step}: {self.directory} already has a checkpoint at step "
                f"{self._latest_step}, and checkpoints are never overwritten; restore it "
                "first (restore_latest, or expman.torch.restore) to continue from it, or use "
                "another directory"
            )
        with collector_paused():  # on the caller's thread only: never while training goes on
            leaves = state_leaves(state() if callable(state) else state)
            if self._writer is None:
                self._write(step, leaves, metrics)
            else:
                self._raise_background_error()  # waits: the staging buffers are free after it
                copies = [self._stage(leaf) for leaf in leaves]
                self._writer.submit(f"step {step}", lambda: self._write(step, copies, metrics))
        # With async_save the write may still fail; it is then raised at the next call.
        self._latest_step = step
        self._saved_any = True
        self._last_save_time = time.monotonic()

    def _write(self, step: int, leaves: list[Leaf], metrics: Mapping[str, float]) -> None:
        final = self.directory / checkpoint_filename(step)
        temporary = temporary_path(final)
        try:
            written = write_checkpoint(
                temporary,
                leaves,
                step=step,
                metrics=metrics,
                params=self.params,
                architecture=_architecture(leaves, self.model_config),
                experiment=self.experiment,
                code_commit=self.code_commit,
                compression=self.compression,
                pack_max_bytes=self.pack_max_bytes,
            )
            commit_file(temporary, final, replace=False)
        except FileExistsError as error:
            _remove_quietly(temporary)
            raise CheckpointExistsError(
                f"cannot save step {step}: another process committed {final} meanwhile "
                "(two writers in one checkpoint directory); committed checkpoints are never "
                "replaced: let one process write (under torch.distributed, rank 0)"
            ) from error
        except OSError as error:
            _remove_quietly(temporary)
            raise CheckpointWriteError(
                f"could not save checkpoint step {step} in {self.directory}: "
                f"{describe_os_error(error)} (earlier checkpoints are intact)"
            ) from error
        except BaseException:
            _remove_quietly(temporary)
            raise
        self._catalog.remember(dataclasses.replace(written, path=final))
        self._apply_retention()

    def _apply_retention(self) -> None:
        valid = [info for info in self._catalog.infos() if info.valid]
        protected = {info.step for info in valid if info.pinned}
        if self._restored_step is not None:
            protected.add(self._restored_step)
        kept = select_kept(self.policy, valid, protected=protected)
        try:
            self._catalog.write_index(max(info.step for info in valid), kept)
        except OSError as error:
            # The new checkpoint is committed; without an index nothing is deleted.
            warnings.warn(
                f"could not update the checkpoint index in {self.directory}: "
                f"{describe_os_error(error)}; no old checkpoint was deleted",
                CheckpointIndexWarning,
                stacklevel=2,
            )
            return
        self._catalog.remove(info.step for info in valid if info.step not in kept)

    def close(self) -> None:
        """Save the last step if it was not saved, and wait for pending work.

        The last step is the one given to the last :meth:`save` call, with the
        state given there, as it is now: modify nothing after the last
        ``save()``, or pass ``last=True`` to it (then close writes nothing). A
        state whose ``current`` check fails is not written
        (:class:`LastStepNotSavedWarning`). Calling ``close`` twice is harmless. A
        temporary directory (no directory given, outside ``expman run``) that
        stayed empty is removed.
        """
        if self._closed:
            return
        try:
            self._raise_background_error()
            if self._pending is not None:
                step, state, metrics, current = self._pending
                if self._latest_step is not None and step <= self._latest_step:
                    pass
                elif current is not None and not current():
                    warnings.warn(
                        f"step {step} was not saved at close(): the state changed after "
                        f"save({step}), and a checkpoint labelled step {step} must hold the "
                        "state of that step; pass last=True to the save() of the last step",
                        LastStepNotSavedWarning,
                        stacklevel=2,
                    )
                else:
                    self._save_now(step, state, metrics)
            self._raise_background_error()
        finally:
            self._closed = True
            self._pending = None
            if self._temporary:
                with contextlib.suppress(OSError):  # not empty: it holds checkpoints or logs
                    self.directory.rmdir()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            # Training failed: do not save its last state as if it had finished.
            self._pending = None
            self.close()

    def wait(self) -> None:
        """Wait for an asynchronous save in flight; raise its failure if it failed."""
        self._raise_background_error()

    def _stage(self, leaf: Leaf) -> Leaf:
        """Copy a value for the background writer into a buffer reused across saves.

        Reusing the buffer makes the copy about 3x faster than a new allocation
        (no page faults), which is most of what an asynchronous save blocks for.
        The staged leaf is kept with it, so a save with the same layout as the
        last one makes no new objects per tensor.
        """
        if isinstance(leaf.value, str):
            return leaf
        if leaf.same_as is not None:  # a tied leaf shares the buffer of its first name
            return leaf._replace(value=self._staging[leaf.same_as].value)
        value = leaf.value
        staged = self._staging.get(leaf.name)
        buffer = None if staged is None else staged.value
        if (
            staged is None
            or not isinstance(buffer, np.ndarray)
            or staged.kind != leaf.kind
            or staged.bits_dtype != leaf.bits_dtype
            or buffer.shape != value.shape
            or buffer.dtype != value.dtype
        ):
            buffer = np.empty(value.shape, value.dtype)
            staged = leaf._replace(value=buffer)
            self._staging[leaf.name] = staged
        np.copyto(buffer, value)
        return staged

    def _raise_background_error(self, *, wait: bool = True) -> None:
        """Raise the failure of an asynchronous save, waiting for it unless ``wait`` is False."""
        if self._writer is None:
            return
        if wait:
            self._writer.wait()
        failure = self._writer.take_error()
        if failure is not None:
            label, error = failure
            raise CheckpointSaveFailedError(
                f"the asynchronous save of {label} failed: {error}"
            ) from error

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this CheckpointManager is closed")

    # -- reading --------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint in the directory, oldest first (damaged ones with ``error``)."""
        self._raise_background_error()
        return self._catalog.infos()

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint, or None if there is none."""
        self._raise_background_error()
        step = self._catalog.latest_step()
        if step is None:
            return None
        return next(info for info in self._catalog.infos() if info.step == step)

    def metadata(self, step: int | None = None) -> CheckpointMetadata:
        """A checkpoint's metadata (the latest by default), without reading any tensor."""
        self._raise_background_error()
        return self._catalog.metadata(self._path_of(step))

    def restore(
        self,
        into: MutableMapping[str, Any],
        *,
        step: int | None = None,
        partial: bool | None = None,
        required: bool = False,
    ) -> int:
        """Fill ``into`` from a checkpoint (the latest by default); return its step.

        Arrays in ``into`` with the checkpoint's shape and dtype are filled in
        place; other values are replaced. The architecture is checked from the
        checkpoint's metadata before any tensor is read, so a refused restore
        leaves ``into`` untouched. Returns 0, touching nothing, when there is no
        checkpoint and no ``step`` was asked for.

        Args:
            into: the model's state, built by the current code.
            step: restore this step instead of the latest.
            partial: restore only the tensors that match, leave the others as
                initialised, and warn (:class:`PartialRestoreWarning`) with a
                report of what was skipped (also in :attr:`last_restore`).
                None: False, unless ``expman run --partial`` started the process.
            required: raise :class:`CheckpointNotFoundError` instead of
                returning 0 when there is no checkpoint (a resume that must
                not quietly start from scratch, e.g. from a mistyped directory).

        Under ``expman run --from-checkpoint OTHER``, a directory with no
        checkpoint yet restores from the other experiment's checkpoint instead
        (a warm start), through the same architecture check.

        Raises:
            ArchitectureMismatchError: the tensors differ (and ``partial`` is False).
            CheckpointNotFoundError: ``step`` has no checkpoint, or there is
                none and ``required``.
            CheckpointCorruptError: the file is damaged; the model may be partly
                filled and should be rebuilt.
            CheckpointFormatError: the file is not an expman checkpoint, or too new.

        Example:
            >>> start = ckpts.restore(into=state)  # doctest: +SKIP
        """
        return self._restore(into, step, partial, required)

    def restore_latest(
        self,
        into: MutableMapping[str, Any],
        *,
        partial: bool | None = None,
        required: bool = False,
    ) -> int:
        """Fill ``into`` from the latest checkpoint; return its step (0 if none).

        ``partial`` and ``required`` as for :meth:`restore`.
        """
        return self._restore(into, None, partial, required)

    def _restore(
        self,
        into: MutableMapping[str, Any],
        step: int | None,
        partial: bool | None,
        required: bool,
    ) -> int:
        with collector_paused():
            return self._restore_paused(into, step, partial, required)

    def _restore_paused(
        self,
        into: MutableMapping[str, Any],
        step: int | None,
        partial: bool | None,
        required: bool,
    ) -> int:
        meta = self.checkpoint_for_restore(step, required=required)
        if meta is None:
            self.last_restore = None
            return 0
        slots = state_slots(into)
        model = _architecture([to_leaf(n, s.value) for n, s in slots.items()], self.model_config)
        # Warnings point at the caller of restore() / restore_latest().
        diff = self.check_architecture(meta, model, partial=partial, stacklevel=5)
        destinations = {n: fillable(slots[n].value) for n in diff.matching}
        for name, value in self.read(meta, names=diff.matching, into=destinations).items():
            _assign(slots[name], value)
        self.report_restore(meta, diff, stacklevel=5)
        return meta.step

    def checkpoint_for_restore(
        self, step: int | None = None, *, required: bool = False
    ) -> CheckpointMetadata | None:
        """The checkpoint a restore would read (its metadata), or None if there is none.

        The latest checkpoint, or ``step``; under ``expman run --from-checkpoint``,
        the other experiment's checkpoint while this directory has none. With
        ``required``, no checkpoint raises :class:`CheckpointNotFoundError`.
        """
        self._raise_background_error()
        path = self._find(step)
        if path is None and step is None and self._warm_start is not None:
            path = self._warm_start
        if path is None and required:
            raise CheckpointNotFoundError(
                f"no checkpoint to restore in {self.directory} (required=True): check that "
                "this is the run's checkpoint directory, or start from scratch without required"
            )
        return None if path is None else self._catalog.metadata(path)

    def check_architecture(
        self,
        meta: CheckpointMetadata,
        model: Architecture,
        *,
        recorded: Architecture | None = None,
        partial: bool | None = None,
        state_differences: Sequence[str] = (),
        stacklevel: int = 2,
    ) -> ArchitectureDiff:
        """Compare a checkpoint's architecture with the model's, before reading any tensor.

        Raises :class:`ArchitectureMismatchError` if the tensors differ or
        ``state_differences`` (lines a framework adapter found in the
        optimizer, scheduler or extra state) is not empty, unless ``partial``;
        warns if only the model config differs. ``recorded`` replaces the
        checkpoint's architecture (a framework adapter passes the part that
        describes the model).
        """
        if partial is None:
            partial = self._partial_default
        diff = compare_architectures(recorded or meta.architecture, model)
        if (not diff.tensors_match or state_differences) and not partial:
            error = ArchitectureMismatchError(
                diff,
                checkpoint=str(meta.path),
                experiment=meta.experiment,
                code_commit=meta.code_commit,
                state_differences=state_differences,
            )
            leave_refusal(error)
            raise error
        if diff.config_changes and diff.tensors_match:
            warnings.warn(
                f"checkpoint {meta.path} was saved with another model config, with the "
                "same tensors: " + "; ".join(diff.config_lines()),
                ModelConfigChangedWarning,
                stacklevel=stacklevel,
            )
        return diff

    def report_restore(
        self,
        meta: CheckpointMetadata,
        diff: ArchitectureDiff,
        *,
        skipped: Sequence[str] = (),
        stacklevel: int = 2,
    ) -> RestoreReport:
        """Record a finished restore (:attr:`last_restore`), warning about what was skipped.

        ``skipped`` adds lines about state outside the model's tensors that a
        partial restore left fresh (a framework adapter's optimizer state).
        """
        report = RestoreReport(meta.step, meta.path, diff.matching, (*diff.lines(), *skipped))
        self.last_restore = report
        if meta.path.parent == self.directory:
            self._restored_step = meta.step
        if report.skipped:
            warnings.warn(
                PartialRestoreWarning(
                    f"partial restore from {meta.path}: {len(report.restored)} tensors "
                    f"restored, {len(report.skipped)} skipped: " + "; ".join(report.skipped),
                    report,
                ),
                stacklevel=stacklevel,
            )
        return report

    def load(
        self,
        step: int | None = None,
        *,
        names: Sequence[str] | None = None,
        into: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Read tensors of a checkpoint (the latest by default) as ``{name: value}``.

        No architecture check: :meth:`restore` is the guarded way into a model.
        ``names`` limits what is read; arrays in ``into`` with the right shape
        and dtype are filled in place and returned. Checksums are verified.
        """
        self._raise_background_error()
        return self.read(self._catalog.metadata(self._path_of(step)), names=names, into=into)

    def read(
        self,
        checkpoint: CheckpointMetadata,
        *,
        names: Sequence[str] | None = None,
        into: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """:meth:`load` for a checkpoint already chosen (see :meth:`checkpoint_for_restore`)."""
        wanted = [r.name for r in checkpoint.tensors] if names is None else list(names)
        with collector_paused():
            return read_tensors(checkpoint, wanted, dict(into or {}))

    def _path_of(self, step: int | None) -> Path:
        path = self._find(step)
        if path is None:
            raise CheckpointNotFoundError(f"{self.directory} has no checkpoint yet")
        return path

    def _find(self, step: int | None) -> Path | None:
        """The file of ``step`` (the latest if None), None if there is no checkpoint."""
        steps = self._catalog.steps()
        if step is None:
            latest = self._catalog.latest_step(steps)
            return None if latest is None else steps[latest]
        if step not in steps:
            available = ", ".join(str(s) for s in steps) or "none"
            raise CheckpointNotFoundError(
                f"{self.directory} has no checkpoint at step {step} (available: {available})"
            )
        return steps[step]

    # -- pins -----------------------------------------------------------------

    def pin(self, step: int) -> None:
        """Keep checkpoint ``step`` whatever the retention policy says."""
        self._path_of(step)
        self._catalog.pin(step)

    def unpin(self, step: int) -> None:
        """Let retention remove checkpoint ``step`` again."""
        self._catalog.unpin(step)


def metric_values(metrics: Mapping[str, Any]) -> dict[str, int | float]:
    """Metrics as plain numbers; refuses anything that is not a real number."""
    values: dict[str, int | float] = {}
    for name, value in metrics.items():
        number = value.item() if getattr(value, "ndim", None) == 0 else value
        if not isinstance(name, str) or isinstance(number, bool):
            number = None
        if not isinstance(number, int | float):
            raise UnsupportedStateError(
                f"metric {name!r} is a {type(value).__module__}.{type(value).__qualname__}; "
                "metrics are numbers: give an int, a float, a numpy scalar or a 0-d tensor "
                "(loss.item())"
            )
        values[name] = number
    return values


def _architecture(leaves: list[Leaf], config: Mapping[str, Any]) -> Architecture:
    return Architecture.of((TensorSpec(l.name, l.shape, l.dtype) for l in leaves), config)


def _assign(slot: Slot, value: Any) -> None:
    if value is not slot.value:
        slot.container[slot.key] = value


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
