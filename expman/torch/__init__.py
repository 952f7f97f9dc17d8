"""PyTorch models, optimizers, LR schedulers, extra state and RNG states through expman.

``pip install expman[torch]``. The same CheckpointManager, file format and
architecture guard as for numpy states; nothing is pickled.

Example:
    >>> import expman, expman.torch
    >>> ckpts = expman.CheckpointManager()  # doctest: +SKIP
    >>> start = expman.torch.restore(ckpts, model, optimizer, scheduler)  # doctest: +SKIP
    >>> for step in range(start, 1000):  # doctest: +SKIP
    ...     loss = train_step(model, optimizer)
    ...     expman.torch.save(ckpts, step + 1, model, optimizer, scheduler,
    ...                       metrics={"loss": loss}, last=step + 1 == 1000)
    >>> ckpts.close()  # doctest: +SKIP

The names each part takes in a checkpoint are listed in ``docs/torch.md``:
the model's ``state_dict`` keys without wrapper prefixes (``fc1.weight``, not
``_orig_mod.fc1.weight`` or ``module.fc1.weight``), ``optimizer/...``,
``lr_scheduler/...``, ``extra/<name>...``, ``rng/...``, ``tied_tensors`` and
``global_step``. Every part is checked before any value is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from expman._errors import CheckpointNotFoundError, CheckpointWriteError
from expman.checkpoints._manager import CheckpointManager, metric_values
from expman.torch import _layout, _restore, _rng

__all__ = ["read_extra", "restore", "save", "state_of"]


def state_of(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    step: int | None = None,
    rng: bool = True,
) -> dict[str, Any]:
    """Everything :func:`save` writes, as an expman state: host arrays, numbers, text.

    Under torch.distributed this holds this process's generators only;
    :func:`save` gathers every rank's.
    """
    state = _layout.ModelParts.of(model).state()
    if optimizer is not None:
        state.update(_layout.optimizer_state(model, optimizer))
    if lr_scheduler is not None:
        state.update(_layout.scheduler_state(lr_scheduler))
    state.update(_layout.extra_state(extra or {}))
    if step is not None:
        state[_layout.STEP] = int(step)
    if rng:
        state.update({f"rng/{name}": value for name, value in _rng.rng_state().items()})
    return state


def save(
    manager: CheckpointManager,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    force: bool = False,
    last: bool = False,
    rng: bool = True,
) -> bool:
    """Save the model, optimizer, scheduler, extra state and RNGs if the policy says so.

    Tensors are copied to the host only when a checkpoint is written (on the
    caller's thread, also with ``async_save``). Pass ``last=True`` at the last
    training step: it is written then. Otherwise ``manager.close()`` writes
    the last step, unless a tensor of the model or optimizer changed since
    this call (then it warns and writes nothing: a checkpoint labelled step N
    holds the state of step N).

    Under torch.distributed every rank calls ``save``: rank 0 decides whether
    to write (its policy), every rank's generators are gathered, and rank 0
    alone writes the file. ``close()`` then cannot write the last step for
    you: pass ``last=True``.
    """
    numbers = metric_values(metrics or {})
    extra = dict(extra or {})

    def state(rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        found = state_of(
            model, optimizer, lr_scheduler, extra=extra, step=step, rng=rng and rngs is None
        )
        for rank, generators in enumerate(rngs or []):
            found.update({f"rng/rank/{rank}/{k}": v for k, v in generators.items()})
        return found

    rank, world = _rng.rank_and_world()
    if world == 1:
        snapshot = _layout.fingerprint(model, optimizer, lr_scheduler)
        return manager.save(
            step,
            state,
            metrics=numbers,
            force=force,
            last=last,
            current=lambda: _layout.fingerprint(model, optimizer, lr_scheduler) == snapshot,
        )
    if not _rng.broadcast_decision(rank == 0 and (force or last or manager.due(step))):
        return False
    generators = _rng.all_ranks(_rng.rng_state()) if rng else []
    error: BaseException | None = None
    if rank == 0:
        try:
            manager.save(step, lambda: state(generators), metrics=numbers, last=True)
        except BaseException as raised:  # the other ranks must hear of it, not wait forever
            error = raised
    # No rank leaves save() before rank 0 has committed the file (or failed to): a rank
    # that went on to exit would tear the process group down under rank 0's feet.
    if not _rng.broadcast_decision(error is None):
        if error is not None:
            raise error
        raise CheckpointWriteError(
            f"rank 0 could not write step {step} to {manager.directory}: see rank 0's error"
        )
    return True


def restore(
    manager: CheckpointManager,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    step: int | None = None,
    partial: bool | None = None,
    rng: bool = True,
    required: bool = False,
) -> int:
    """Restore the latest checkpoint (or ``step``) into the model and everything beside it.

    Every part is checked first, from the checkpoint's metadata and its small
    text records, before any value is written: the model's tensors (names,
    shapes, dtypes, ties), the optimizer (class, parameter groups, the
    parameters with state), the scheduler's class and the extra state. Any
    difference raises :class:`ArchitectureMismatchError` listing all of them,
    unless ``partial``: then what matches is restored (optimizer state only
    for parameters restored with their shape), the rest starts fresh, and a
    :class:`PartialRestoreWarning` says what. A part given here that the
    checkpoint lacks starts fresh, with a :class:`FreshStateWarning`.

    Tensors are restored onto their own device and layout (CPU contiguous
    tensors are read straight from the file). ``extra`` maps names to objects
    with ``state_dict()``/``load_state_dict()``, ``torch.Generator`` objects
    or dicts (restored in place). Returns the step, or 0 with no checkpoint;
    with ``required``, no checkpoint raises :class:`CheckpointNotFoundError`
    (a resume that must not quietly start from scratch).
    """
    return _restore.restore(
        manager,
        model,
        optimizer,
        lr_scheduler,
        extra=dict(extra or {}),
        step=step,
        partial=partial,
        rng=rng,
        required=required,
    )


def read_extra(manager: CheckpointManager, name: str, *, step: int | None = None) -> Any:
    """The extra state ``name`` of the latest checkpoint (or ``step``), as a value.

    What ``save(..., extra={name: value})`` wrote, with its exact types back
    (dicts, tuples, int keys, ``Counter``s) and its tensors as CPU tensors,
    without a live object of the same structure (which :func:`restore`
    needs). The checkpoint is the one :func:`restore` would read (under
    ``expman run --from-checkpoint``, the other experiment's while this
    directory has none). Nothing is checked against a model: use it for
    state that is not a module's, such as a trainer's loop counters.

    Raises:
        CheckpointNotFoundError: no checkpoint, or none with this extra state.

    Example:
        >>> expman.torch.save(ckpts, 10, model, extra={"loop": {"epoch": 3}})  # doctest: +SKIP
        >>> expman.torch.read_extra(ckpts, "loop")  # doctest: +SKIP
        {'epoch': 3}
    """
    meta = manager.checkpoint_for_restore(step)
    if meta is None:
        raise CheckpointNotFoundError(f"{manager.directory} has no checkpoint yet")
    key = _layout.EXTRA + name
    if key not in meta.architecture.by_name():
        raise CheckpointNotFoundError(
            f"checkpoint {meta.path} has no extra state {name!r}: it was saved without "
            f"extra={{{name!r}: ...}}"
        )
    return _restore.read_value(manager, meta, key)
