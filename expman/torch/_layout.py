"""What ``expman.torch`` writes: the names of each part of a training state, and its values."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch

from expman._errors import UnsupportedStateError
from expman.checkpoints._architecture import TensorSpec
from expman.checkpoints._state import SameAs
from expman.torch import _typed
from expman.torch._tensors import canonical, dtype_name, tied_tensors, to_numpy, unwrap

__all__ = [
    "EXTRA",
    "OPTIMIZER_CLASS",
    "OPTIMIZER_GROUPS",
    "OPTIMIZER_STATE",
    "RESERVED",
    "SCHEDULER_CLASS",
    "SCHEDULER_STATE",
    "STEP",
    "TIED",
    "ModelParts",
    "class_name",
    "extra_state",
    "extra_value",
    "fingerprint",
    "is_model",
    "optimizer_names",
    "optimizer_state",
    "scheduler_state",
]

STEP = "global_step"
TIED = "tied_tensors"
OPTIMIZER_CLASS = "optimizer/class"
OPTIMIZER_GROUPS = "optimizer/param_groups"
OPTIMIZER_STATE = "optimizer/state/"
SCHEDULER_CLASS = "lr_scheduler/class"
SCHEDULER_STATE = "lr_scheduler/state"
EXTRA = "extra/"
RESERVED = ("optimizer/", "lr_scheduler/", "rng/", EXTRA)
_EXTRA_STATE_SUFFIX = "_extra_state"


def is_model(name: str) -> bool:
    """Whether a checkpoint's tensor name belongs to the model's ``state_dict``."""
    return name not in (STEP, TIED) and not name.startswith(RESERVED)


def class_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclass(frozen=True)
class ModelParts:
    """A model's tensors and modules' extra states, by canonical name (no wrapper prefixes)."""

    tensors: dict[str, torch.Tensor]
    extra_states: dict[str, tuple[torch.nn.Module, Any]]

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelParts:
        live = unwrap(model)
        owners = {
            f"{canonical(name)}.{_EXTRA_STATE_SUFFIX}".lstrip("."): module
            for name, module in live.named_modules()
            if type(module).get_extra_state is not torch.nn.Module.get_extra_state
        }
        tensors: dict[str, torch.Tensor] = {}
        extra_states: dict[str, tuple[torch.nn.Module, Any]] = {}
        for key, value in live.state_dict().items():
            name = canonical(key)
            if name in (STEP, TIED) or name.startswith(RESERVED):
                raise UnsupportedStateError(
                    f"model tensor {name!r} uses a name expman.torch reserves ({STEP}, {TIED}, "
                    f"{', '.join(RESERVED)}): rename the module"
                )
            if name in owners:
                extra_states[name] = (owners[name], value)
            elif isinstance(value, torch.Tensor):
                tensors[name] = value
            else:
                raise UnsupportedStateError(
                    f"model state {name!r} is a {type(value).__name__}, not a tensor: "
                    "expman.torch stores tensors and modules' get_extra_state()"
                )
        return cls(tensors, extra_states)

    def tied(self) -> dict[str, str]:
        return tied_tensors(self.tensors)

    def state(self) -> dict[str, Any]:
        """The model's part of a checkpoint: tensors once each (tied ones linked)."""
        tied = self.tied()
        state: dict[str, Any] = {
            name: SameAs(tied[name]) if name in tied else to_numpy(tensor)
            for name, tensor in self.tensors.items()
        }
        if tied:
            state[TIED] = json.dumps(tied, sort_keys=True)
        for name, (_, value) in self.extra_states.items():
            text, tensors = _typed.dumps(value, f"the extra state of module {name!r}")
            state[name] = text
            state.update({f"{name}/{key}": to_numpy(t) for key, t in tensors.items()})
        return state

    def specs(self) -> list[TensorSpec]:
        """Every name the model's part of a checkpoint has, with shape and dtype."""
        specs = [TensorSpec(n, tuple(t.shape), dtype_name(t)) for n, t in self.tensors.items()]
        for name, (_, value) in self.extra_states.items():
            specs.append(TensorSpec(name, (), "str"))
            _, tensors = _typed.dumps(value, f"the extra state of module {name!r}")
            specs.extend(
                TensorSpec(f"{name}/{key}", tuple(t.shape), dtype_name(t))
                for key, t in tensors.items()
            )
        return specs


def optimizer_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The model's name of each parameter, group by group, in the optimizer's order."""
    names = {id(p): canonical(n) for n, p in unwrap(model).named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        order = []
        for parameter in group["params"]:
            if id(parameter) not in names:
                raise UnsupportedStateError(
                    "the optimizer holds a parameter that is not in the model: save the "
                    "optimizer with the model it trains"
                )
            order.append(names[id(parameter)])
        groups.append(order)
    return groups


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    order = [name for group in optimizer_names(model, optimizer) for name in group]
    saved = optimizer.state_dict()
    state: dict[str, Any] = {OPTIMIZER_CLASS: class_name(optimizer)}
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            name = f"{OPTIMIZER_STATE}{order[index]}/{key}"
            if torch.is_tensor(value):
                state[name] = to_numpy(value)
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
    state.update(_text(OPTIMIZER_GROUPS, groups, "the optimizer's param_groups"))
    return state


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    return {
        SCHEDULER_CLASS: class_name(scheduler),
        **_text(SCHEDULER_STATE, scheduler.state_dict(), "the LR scheduler's state"),
    }


def extra_value(name: str, value: Any) -> Any:
    """What is saved of one extra object: its ``state_dict()``, a generator's state, a dict."""
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, MutableMapping):
        return dict(value)
    if callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    ):
        return value.state_dict()
    raise UnsupportedStateError(
        f"extra state {name!r} is a {class_name(value)}: give an object with state_dict() "
        "and load_state_dict() (GradScaler, an EMA model), a torch.Generator, or a dict"
    )


def extra_state(extra: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, value in extra.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise UnsupportedStateError(
                f"extra state name {name!r} is not a non-empty string without '/': "
                "use names such as 'scaler'"
            )
        state.update(_text(EXTRA + name, extra_value(name, value), f"extra state {name!r}"))
    return state


def _text(name: str, value: Any, what: str) -> dict[str, Any]:
    text, tensors = _typed.dumps(value, what)
    return {name: text, **{f"{name}/{key}": to_numpy(t) for key, t in tensors.items()}}


def _tensors_of(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
    if optimizer is not None:
        for entries in optimizer.state.values():
            yield from (v for v in entries.values() if isinstance(v, torch.Tensor))


def fingerprint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> tuple[Any, ...]:
    """Changes when a tensor is modified in place or replaced (``model.half()``)."""
    tensors = tuple(
        (t.data_ptr(), t._version, t.dtype, t.device) for t in _tensors_of(model, optimizer)
    )
    return tensors, getattr(scheduler, "last_epoch", None)
