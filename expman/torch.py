"""PyTorch models, optimizers, LR schedulers and RNG states through expman checkpoints.

``pip install expman[torch]``. The same CheckpointManager, file format and
architecture guard as for numpy states; nothing is pickled.

Example:
    >>> import expman, expman.torch
    >>> ckpts = expman.CheckpointManager()  # doctest: +SKIP
    >>> start = expman.torch.restore(ckpts, model, optimizer, scheduler)  # doctest: +SKIP
    >>> for step in range(start, 1000):  # doctest: +SKIP
    ...     loss = train_step(model, optimizer)
    ...     expman.torch.save(ckpts, step + 1, model, optimizer, scheduler, metrics={"loss": loss})
    >>> ckpts.close()  # doctest: +SKIP

In a checkpoint, the model's tensors keep their ``state_dict`` keys
(``fc1.weight``); the optimizer's state is ``optimizer/state/<parameter
name>/<key>`` (``optimizer/state/fc1.weight/exp_avg``) plus its
``param_groups`` as JSON text in ``optimizer/param_groups``; an LR scheduler's
``state_dict`` is JSON text in ``lr_scheduler/state``; ``rng/torch``,
``rng/cuda/<device>``, ``rng/numpy/*`` and ``rng/python`` hold the random
generators; ``global_step`` the step. The architecture guard compares the
model's tensors only. Tensors of dtypes numpy lacks (bfloat16, float8) are
stored as unsigned integers of the same width holding their bits, with their
dtype recorded (see docs/checkpoint-format.md).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from expman._errors import UnsupportedStateError
from expman.checkpoints._architecture import Architecture, TensorSpec
from expman.checkpoints._manager import CheckpointManager
from expman.checkpoints._state import Bits, fillable

__all__ = ["restore", "save", "state_of"]

RESERVED = ("optimizer/", "lr_scheduler/", "rng/")
STEP = "global_step"
_BITS_DTYPES = {
    dtype: name
    for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if isinstance(dtype := getattr(torch, name, None), torch.dtype)
}
_BY_NAME = {name: dtype for dtype, name in _BITS_DTYPES.items()}
_UINT = {1: (torch.uint8, np.uint8), 2: (torch.int16, np.uint16)}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray[Any, Any] | Bits:
    """A host copy (or a view, for a contiguous CPU tensor) in a form expman stores."""
    host = tensor.detach().cpu().contiguous()
    name = _BITS_DTYPES.get(host.dtype)
    if name is not None:
        carrier, unsigned = _UINT[host.element_size()]
        return Bits(host.view(carrier).numpy().view(unsigned), name)
    array: np.ndarray[Any, Any] = host.numpy()
    return array


def _to_torch(value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, Bits):
        carrier, _ = _UINT[value.array.dtype.itemsize]
        signed = value.array.view(np.int16) if carrier is torch.int16 else value.array
        result = torch.from_numpy(np.ascontiguousarray(signed)).view(_BY_NAME[value.dtype])
    elif isinstance(value, np.ndarray | np.generic):
        result = torch.from_numpy(np.array(value, copy=True))
    else:
        result = torch.tensor(value)
    return result if like is None else result.to(like.device)


def _check_model_keys(keys: Any) -> None:
    for key in keys:
        if key == STEP or key.startswith(RESERVED):
            raise UnsupportedStateError(
                f"model tensor {key!r} uses a name expman.torch reserves ({STEP}, "
                f"{', '.join(RESERVED)}): rename the module"
            )


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The model's name of each parameter, in the optimizer's order."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if id(parameter) not in names:
                raise UnsupportedStateError(
                    "the optimizer holds a parameter that is not in the model: save the "
                    "optimizer with the model it trains"
                )
            order.append(names[id(parameter)])
    return order


def state_of(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    *,
    step: int | None = None,
    rng: bool = True,
) -> dict[str, Any]:
    """Everything to save, as an expman state: host arrays, scalars and JSON text."""
    model_state = model.state_dict()
    _check_model_keys(model_state)
    state: dict[str, Any] = {key: _to_numpy(t) for key, t in model_state.items()}
    if optimizer is not None:
        state.update(_optimizer_state(model, optimizer))
    if lr_scheduler is not None:
        state["lr_scheduler/state"] = _json("the LR scheduler's state", lr_scheduler.state_dict())
    if step is not None:
        state[STEP] = int(step)
    if rng:
        state.update(_rng_state())
    return state


def _json(what: str, value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as error:
        raise UnsupportedStateError(
            f"{what} is not JSON-able ({error}); expman never pickles: keep it to numbers, "
            "strings, lists and dicts"
        ) from error


def _optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    order = _parameter_names(model, optimizer)
    saved = optimizer.state_dict()
    state: dict[str, Any] = {}
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            name = f"optimizer/state/{order[index]}/{key}"
            if torch.is_tensor(value):
                state[name] = _to_numpy(value)
            elif isinstance(value, bool | int | float):
                state[name] = value
            else:
                raise UnsupportedStateError(
                    f"optimizer state {key!r} is a {type(value).__name__}; expman stores "
                    "tensors and numbers (nothing is pickled)"
                )
    groups = [
        {
            **{k: v for k, v in group.items() if k != "params"},
            "params": [order[i] for i in group["params"]],
        }
        for group in saved["param_groups"]
    ]
    state["optimizer/param_groups"] = _json("the optimizer's param_groups", groups)
    return state


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"rng/torch": torch.get_rng_state().numpy()}
    if torch.cuda.is_available():
        for device, generator in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng/cuda/{device}"] = generator.numpy()
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state["rng/numpy/keys"] = np.asarray(keys)
    state["rng/numpy/state"] = json.dumps([kind, int(position), int(has_gauss), float(gauss)])
    version, internal, gauss_next = random.getstate()
    state["rng/python"] = json.dumps([version, list(internal), gauss_next])
    return state


def save(
    manager: CheckpointManager,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
    force: bool = False,
    rng: bool = True,
) -> bool:
    """Save the model (and optimizer, scheduler, RNG states) if the policy says so.

    Tensors are copied to the host only when a checkpoint is written (on the
    caller's thread, also with ``async_save``), and at ``manager.close()``.
    """
    return manager.save(
        step,
        lambda: state_of(model, optimizer, lr_scheduler, step=step, rng=rng),
        metrics=metrics,
        force=force,
    )


def _is_model(name: str) -> bool:
    return name != STEP and not name.startswith(RESERVED)


def restore(
    manager: CheckpointManager,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    *,
    step: int | None = None,
    partial: bool | None = None,
    rng: bool = True,
) -> int:
    """Restore the latest checkpoint (or ``step``) into the model, optimizer, scheduler.

    The model's tensors are checked first, from the checkpoint's metadata:
    names, shapes and dtypes must match (else :class:`ArchitectureMismatchError`,
    with every difference, before any weight is touched), unless ``partial``.
    Tensors are restored onto the device of the model's own tensors (read
    straight into CPU tensors). Returns the step, or 0 with no checkpoint.
    """
    meta = manager.checkpoint_for_restore(step)
    if meta is None:
        return 0
    model_state = model.state_dict()
    targets = {key: _host_target(tensor) for key, tensor in model_state.items()}
    specs = [TensorSpec(key, tuple(t.shape), _dtype_name(t)) for key, t in model_state.items()]
    recorded = Architecture.of(
        (s for s in meta.architecture.tensors if _is_model(s.name)), meta.architecture.config
    )
    diff = manager.check_architecture(
        meta,
        Architecture.of(specs, manager.model_config),
        recorded=recorded,
        partial=partial,
        stacklevel=3,
    )
    extra = [
        r.name
        for r in meta.tensors
        if not _is_model(r.name)
        and (optimizer is not None or not r.name.startswith("optimizer/"))
        and (lr_scheduler is not None or not r.name.startswith("lr_scheduler/"))
        and (rng or not r.name.startswith("rng/"))
    ]
    values = manager.read(
        meta,
        names=[*diff.matching, *extra],
        into={n: fillable(targets[n]) for n in diff.matching},
    )
    with torch.no_grad():
        for name in diff.matching:
            tensor = model_state[name]
            if not _shares_memory(targets[name], values[name]):
                tensor.copy_(_to_torch(values[name], tensor))
    if optimizer is not None and "optimizer/param_groups" in values:
        _restore_optimizer(model, optimizer, values)
    if lr_scheduler is not None and "lr_scheduler/state" in values:
        lr_scheduler.load_state_dict(json.loads(values["lr_scheduler/state"]))
    if rng:
        _restore_rng(values)
    manager.report_restore(meta, diff, stacklevel=3)
    return meta.step


def _dtype_name(tensor: torch.Tensor) -> str:
    return _BITS_DTYPES.get(tensor.dtype) or str(tensor.dtype).removeprefix("torch.")


def _host_target(tensor: torch.Tensor) -> np.ndarray[Any, Any] | Bits:
    """A CPU contiguous tensor's own memory (read in place), else a host buffer."""
    if tensor.device.type == "cpu" and tensor.is_contiguous():
        return _to_numpy(tensor)  # a view: reading fills the tensor
    return _to_numpy(torch.empty_like(tensor, device="cpu"))


def _shares_memory(target: Any, value: Any) -> bool:
    return fillable(target) is fillable(value) and isinstance(fillable(value), np.ndarray)


def _restore_optimizer(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, values: Mapping[str, Any]
) -> None:
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    groups = json.loads(values["optimizer/param_groups"])
    for group in groups:
        group["params"] = [index[name] for name in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in values.items():
        if name.startswith("optimizer/state/"):
            parameter, key = name.removeprefix("optimizer/state/").rsplit("/", 1)
            state.setdefault(index[parameter], {})[key] = (
                value if isinstance(value, bool | int | float) else _to_torch(value)
            )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _restore_rng(values: Mapping[str, Any]) -> None:
    if "rng/torch" in values:
        torch.set_rng_state(torch.from_numpy(np.array(values["rng/torch"], copy=True)))
    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            generator = values.get(f"rng/cuda/{device}")
            if generator is not None:
                torch.cuda.set_rng_state(torch.from_numpy(np.array(generator)), device)
    if "rng/numpy/keys" in values:
        kind, position, has_gauss, gauss = json.loads(values["rng/numpy/state"])
        np.random.set_state((kind, values["rng/numpy/keys"], position, has_gauss, gauss))
    if "rng/python" in values:
        version, internal, gauss_next = json.loads(values["rng/python"])
        random.setstate((version, tuple(internal), gauss_next))
