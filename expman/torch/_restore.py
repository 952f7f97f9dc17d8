"""Restore a training state: check every part first, then write into each one."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from expman._errors import FreshStateWarning
from expman.checkpoints._architecture import (
    Architecture,
    TensorSpec,
    compare_architectures,
)
from expman.checkpoints._format import CheckpointMetadata
from expman.checkpoints._manager import CheckpointManager
from expman.checkpoints._state import fillable
from expman.torch import _typed
from expman.torch._layout import (
    EXTRA,
    OPTIMIZER_CLASS,
    OPTIMIZER_GROUPS,
    OPTIMIZER_STATE,
    SCHEDULER_CLASS,
    SCHEDULER_STATE,
    TIED,
    ModelParts,
    class_name,
    extra_value,
    is_model,
    optimizer_names,
)
from expman.torch._rng import rank_and_world, restore_rng
from expman.torch._tensors import dtype_name, empty_like_spec, host_view, to_torch

__all__ = ["read_value", "restore"]

# Tensors that cannot be read in place (other devices, other layouts) go
# through host buffers of at most this many bytes at a time (or the largest).
_BATCH_BYTES = 64 * 2**20


@dataclass(frozen=True)
class _Checkpoint:
    """A checkpoint's metadata and its small text datasets, read before any check."""

    meta: CheckpointMetadata
    specs: dict[str, TensorSpec]
    texts: dict[str, str]

    def has(self, name: str) -> bool:
        return name in self.specs

    def under(self, prefix: str) -> dict[str, TensorSpec]:
        return {n.removeprefix(prefix): s for n, s in self.specs.items() if n.startswith(prefix)}


def restore(
    manager: CheckpointManager,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any | None,
    *,
    extra: Mapping[str, Any],
    step: int | None,
    partial: bool | None,
    rng: bool,
    required: bool,
) -> int:
    meta = manager.checkpoint_for_restore(step, required=required)
    if meta is None:
        return 0
    partial = manager.partial_by_default if partial is None else partial
    specs = meta.architecture.by_name()
    small = [OPTIMIZER_CLASS, OPTIMIZER_GROUPS, SCHEDULER_CLASS, SCHEDULER_STATE, TIED]
    small += [EXTRA + name for name in extra]
    texts = manager.read(meta, names=[n for n in small if n in specs])
    checkpoint = _Checkpoint(meta, specs, texts)
    parts = ModelParts.of(model)
    live = {spec.name: spec for spec in parts.specs()}

    fresh: list[str] = []
    lines = _tie_lines(checkpoint, parts)
    groups = optimizer_names(model, optimizer) if optimizer is not None else []
    scheduler_ok = False
    if optimizer is not None:
        if checkpoint.has(OPTIMIZER_GROUPS):
            lines += _optimizer_lines(checkpoint, optimizer, groups)
        else:
            fresh.append("the optimizer")
    if lr_scheduler is not None:
        if checkpoint.has(SCHEDULER_STATE):
            found = _scheduler_lines(checkpoint, lr_scheduler)
            scheduler_ok = not found
            lines += found
        else:
            fresh.append("the LR scheduler")
    extras_ok: dict[str, Any] = {}
    for name, value in extra.items():
        if not checkpoint.has(EXTRA + name):
            fresh.append(f"extra state {name!r}")
            continue
        found = _extra_lines(checkpoint, name, value)
        lines += found
        if not found:
            extras_ok[name] = value

    recorded = Architecture.of(
        (s for s in meta.architecture.tensors if is_model(s.name)), meta.architecture.config
    )
    diff = manager.check_architecture(
        meta,
        Architecture.of(live.values(), manager.model_config),
        recorded=recorded,
        partial=partial,
        state_differences=lines,
        stacklevel=4,
    )
    # Everything is checked; from here on values are written.
    _restore_model(manager, checkpoint, parts, diff.matching)
    if optimizer is not None and checkpoint.has(OPTIMIZER_GROUPS):
        same_class = checkpoint.texts.get(OPTIMIZER_CLASS) in (None, class_name(optimizer))
        lines += _restore_optimizer(
            manager, checkpoint, optimizer, groups, set(diff.matching), same_class=same_class
        )
    if lr_scheduler is not None and scheduler_ok:
        lr_scheduler.load_state_dict(_read_text(manager, checkpoint, SCHEDULER_STATE))
    for name, value in extras_ok.items():
        _load_extra(value, _read_text(manager, checkpoint, EXTRA + name))
    if rng:
        _restore_rng(manager, checkpoint, fresh)
    if fresh:
        warnings.warn(
            f"checkpoint {meta.path} has no state for {', '.join(fresh)}: "
            f"{'it starts' if len(fresh) == 1 else 'they start'} fresh",
            FreshStateWarning,
            stacklevel=3,
        )
    manager.report_restore(meta, diff, skipped=lines, stacklevel=4)
    return meta.step


def _tie_lines(checkpoint: _Checkpoint, parts: ModelParts) -> list[str]:
    """Tied tensors must be tied alike (a file without the record predates it)."""
    if TIED not in checkpoint.texts:
        return []
    theirs: dict[str, str] = json.loads(checkpoint.texts[TIED])
    ours = parts.tied()
    lines = []
    for name in sorted(theirs.keys() | ours.keys()):
        if theirs.get(name) == ours.get(name):
            continue
        if name not in theirs:
            lines.append(f"{name}: tied to {ours[name]} in the model, not in the checkpoint")
        elif name not in ours:
            lines.append(f"{name}: tied to {theirs[name]} in the checkpoint, not in the model")
        else:
            lines.append(
                f"{name}: tied to {theirs[name]} in the checkpoint, to {ours[name]} in the model"
            )
    return lines


def _optimizer_lines(
    checkpoint: _Checkpoint, optimizer: torch.optim.Optimizer, groups: list[list[str]]
) -> list[str]:
    lines = []
    theirs = checkpoint.texts.get(OPTIMIZER_CLASS)
    if theirs is not None and theirs != class_name(optimizer):
        lines.append(f"optimizer: class checkpoint {theirs} vs optimizer {class_name(optimizer)}")
    saved = [list(group["params"]) for group in json.loads(checkpoint.texts[OPTIMIZER_GROUPS])]
    if len(saved) != len(groups):
        lines.append(
            f"optimizer: {len(saved)} parameter groups in the checkpoint, "
            f"{len(groups)} in the optimizer"
        )
    for index, (before, now) in enumerate(zip(saved, groups, strict=False)):
        if before == now:
            continue
        missing = [n for n in now if n not in before]
        unexpected = [n for n in before if n not in now]
        what = [f"missing from the checkpoint: {', '.join(missing)}"] if missing else []
        what += [f"not in the optimizer: {', '.join(unexpected)}"] if unexpected else []
        lines.append(
            f"optimizer: parameter group {index}: "
            + ("; ".join(what) or "the same parameters in another order")
        )
    # State tensors follow their parameter: a parameter whose shape or dtype
    # changed is listed once, as a model difference.
    trained = {name for group in groups for name in group}
    untrained = {key.rsplit("/", 1)[0] for key in checkpoint.under(OPTIMIZER_STATE)} - trained
    lines += [
        f"optimizer: state for {name} in the checkpoint, which the optimizer does not train"
        for name in sorted(untrained)
    ]
    return lines


def _scheduler_lines(checkpoint: _Checkpoint, scheduler: Any) -> list[str]:
    theirs = checkpoint.texts.get(SCHEDULER_CLASS)
    if theirs is None or theirs == class_name(scheduler):
        return []
    return [f"lr_scheduler: class checkpoint {theirs} vs scheduler {class_name(scheduler)}"]


def _extra_lines(checkpoint: _Checkpoint, name: str, value: Any) -> list[str]:
    what = f"extra state {name!r}"
    text, tensors = _typed.dumps(extra_value(name, value), what)
    ours = Architecture.of(
        TensorSpec(key, tuple(t.shape), dtype_name(t)) for key, t in tensors.items()
    )
    theirs = Architecture.of(
        TensorSpec(key, spec.shape, spec.dtype)
        for key, spec in checkpoint.under(f"{EXTRA}{name}/").items()
    )
    before, now = json.loads(checkpoint.texts[EXTRA + name]), json.loads(text)
    diff = compare_architectures(theirs, ours)
    retyped = {
        key: f"{key}: a tensor {theirs.by_name()[key].describe()} in the checkpoint, "
        f"{_kind_of(_at(now, key))} here: give it the type it was saved with"
        for key in diff.unexpected
        if _at(now, key) is not _ABSENT
    } | {
        key: f"{key}: {_kind_of(_at(before, key))} in the checkpoint, a tensor "
        f"{ours.by_name()[key].describe()} here: give it the type it was saved with"
        for key in diff.missing
        if _at(before, key) is not _ABSENT
    }
    lines = [
        f"extra {name}: {line}"
        for line in [
            *(line for line in diff.lines() if line.split(": ", 1)[0] not in retyped),
            *retyped.values(),
        ]
    ]
    if isinstance(before, dict) and isinstance(now, dict) and now and before.keys() != now.keys():
        missing = sorted(now.keys() - before.keys())
        unexpected = sorted(before.keys() - now.keys())
        keys = [f"keys missing from the checkpoint: {', '.join(missing)}"] if missing else []
        keys += [f"keys not in the extra state: {', '.join(unexpected)}"] if unexpected else []
        lines.append(f"extra {name}: " + "; ".join(keys))
    return lines


_ABSENT = object()


def _at(value: Any, key: str) -> Any:
    """The value at a tensor's key path (``a/b``) in typed JSON, or ``_ABSENT``."""
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _kind_of(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        tag = next(iter(value))
        if tag.startswith("__") and tag.endswith("__"):
            return f"a {tag.strip('_')}"
    return f"a {type(value).__name__}" if value is not None else "None"


def _read_text(manager: CheckpointManager, checkpoint: _Checkpoint, name: str) -> Any:
    return read_value(manager, checkpoint.meta, name, checkpoint.texts.get(name))


def read_value(
    manager: CheckpointManager, meta: CheckpointMetadata, name: str, text: str | None = None
) -> Any:
    """A typed-JSON value with its tensors (CPU tensors); ``text`` if already read."""
    if text is None:
        text = manager.read(meta, names=[name])[name]
    refs = _typed.tensor_names(text)
    values = manager.read(meta, names=[f"{name}/{ref}" for ref in refs])
    return _typed.loads(text, {ref: to_torch(values[f"{name}/{ref}"]) for ref in refs})


def _restore_model(
    manager: CheckpointManager, checkpoint: _Checkpoint, parts: ModelParts, names: Sequence[str]
) -> None:
    tensors = parts.tensors
    theirs: dict[str, str] = json.loads(checkpoint.texts.get(TIED, "{}"))
    # A name tied alike in both is filled through its first name.
    same = {name for name, first in parts.tied().items() if theirs.get(name) == first}
    wanted = [n for n in names if n in tensors and n not in same]
    views = {name: host_view(tensors[name]) for name in wanted}
    in_place = {name: view for name, view in views.items() if view is not None}
    values = manager.read(
        checkpoint.meta, names=list(in_place), into={n: fillable(v) for n, v in in_place.items()}
    )
    with torch.no_grad():
        for name, value in values.items():
            if fillable(value) is not fillable(in_place[name]):
                tensors[name].copy_(to_torch(value))
        for batch in _batches([n for n, v in views.items() if v is None], checkpoint.specs):
            for name, value in manager.read(checkpoint.meta, names=batch).items():
                tensors[name].copy_(to_torch(value))
    for name, (module, _) in parts.extra_states.items():
        if name in names:
            module.set_extra_state(_read_text(manager, checkpoint, name))


def _batches(names: list[str], specs: Mapping[str, TensorSpec]) -> list[list[str]]:
    """Names in groups of at most ``_BATCH_BYTES`` (or one tensor larger than that)."""
    batches: list[list[str]] = []
    size = _BATCH_BYTES
    for name in names:
        spec = specs[name]
        count = 1
        for dim in spec.shape:
            count *= dim
        nbytes = count * empty_like_spec((), spec.dtype).element_size()
        if not batches or size + nbytes > _BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += nbytes
    return batches


def _restore_optimizer(
    manager: CheckpointManager,
    checkpoint: _Checkpoint,
    optimizer: torch.optim.Optimizer,
    groups: list[list[str]],
    restored: set[str],
    *,
    same_class: bool,
) -> list[str]:
    """Load the optimizer's state for the parameters restored alike; the rest start fresh.

    Returns one line naming the parameters whose state starts fresh, if any.
    """
    order = [name for group in groups for name in group]
    eligible = {name for name in order if name in restored} if same_class else set()
    saved = checkpoint.under(OPTIMIZER_STATE)
    wanted = [key for key in saved if key.rsplit("/", 1)[0] in eligible]
    current = optimizer.state_dict()
    index = {name: i for i, name in enumerate(order)}
    buffers = {
        key: host_view(_state_buffer(current["state"], index, key, saved[key]))
        for key in wanted
        if saved[key].dtype != "str"
    }
    values = manager.read(
        checkpoint.meta,
        names=[OPTIMIZER_STATE + key for key in wanted],
        into={OPTIMIZER_STATE + k: fillable(b) for k, b in buffers.items() if b is not None},
    )
    with_state = {key.rsplit("/", 1)[0] for key in wanted}
    state: dict[int, dict[str, Any]] = {
        i: entries for i, entries in current["state"].items() if order[i] not in with_state
    }
    for key in wanted:
        parameter, slot = key.rsplit("/", 1)
        value = values[OPTIMIZER_STATE + key]
        state.setdefault(index[parameter], {})[slot] = (
            value if isinstance(value, bool | int | float) else to_torch(value)
        )
    param_groups = current["param_groups"]
    if same_class:
        stored = _read_text(manager, checkpoint, OPTIMIZER_GROUPS)
        if len(stored) == len(param_groups):
            param_groups = [
                {**{k: v for k, v in before.items() if k != "params"}, "params": now["params"]}
                for before, now in zip(stored, param_groups, strict=True)
            ]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    saved_parameters = {key.rsplit("/", 1)[0] for key in saved}
    starts_fresh = [name for name in order if name in saved_parameters and name not in eligible]
    if not starts_fresh:
        return []
    return [f"optimizer: state starts fresh for {', '.join(starts_fresh)}"]


def _state_buffer(
    state: Mapping[int, Mapping[str, Any]], index: Mapping[str, int], key: str, spec: TensorSpec
) -> torch.Tensor:
    """Where to read an optimizer state tensor: the optimizer's own one if it fits, else new.

    Reading into the tensors an optimizer already has keeps a restore from
    holding two copies of its state at once.
    """
    parameter, slot = key.rsplit("/", 1)
    existing = state.get(index[parameter], {}).get(slot)
    if (
        isinstance(existing, torch.Tensor)
        and tuple(existing.shape) == spec.shape
        and dtype_name(existing) == spec.dtype
        and host_view(existing) is not None
    ):
        return existing
    return empty_like_spec(spec.shape, spec.dtype)


def _load_extra(target: Any, value: Any) -> None:
    if isinstance(target, torch.Generator):
        target.set_state(value)
    elif isinstance(target, MutableMapping):
        target.clear()
        target.update(value)
    else:
        target.load_state_dict(value)


def _restore_rng(manager: CheckpointManager, checkpoint: _Checkpoint, fresh: list[str]) -> None:
    rank, world = rank_and_world()
    prefix = f"rng/rank/{rank}/"
    names = [n for n in checkpoint.specs if n.startswith(prefix)]
    if not names and world > 1:
        fresh.append(f"the random generators of rank {rank}")
        return
    if not names:
        prefix = "rng/"
        names = [n for n in checkpoint.specs if n.startswith(prefix) and "rank/" not in n]
    values = manager.read(checkpoint.meta, names=names)
    restore_rng({name.removeprefix(prefix): value for name, value in values.items()})
