"""Python values as JSON text that comes back with its exact types; tensors beside it.

Schedulers, optimizers' ``param_groups``, extra state and modules'
``get_extra_state()`` hold more than JSON knows: ``Counter`` milestones with
int keys, ``betas`` tuples, tensors. Each such value is written as a small
tagged object, so that decoding gives back the same types:

- a tuple: ``{"__tuple__": [...]}``; a ``Counter``: ``{"__counter__": [[key, count], ...]}``
- a dict whose keys are not all strings (or that uses a tag as a key):
  ``{"__dict__": [[key, value], ...]}``; other dicts are JSON objects
- a numpy scalar: ``{"__numpy__": ["float32", 0.5]}``
- a tensor: ``{"__tensor__": "path/of/keys"}``, the tensor being stored as the
  dataset ``<name of the text>/path/of/keys``

Anything else is refused: nothing is pickled.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from expman._errors import UnsupportedStateError

__all__ = ["dumps", "loads", "tensor_names"]

_TAGS = ("__tuple__", "__counter__", "__dict__", "__numpy__", "__tensor__")


def dumps(value: Any, what: str) -> tuple[str, dict[str, torch.Tensor]]:
    """JSON text for ``value``, and its tensors by the name the text refers to them."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(value, (), tensors, what)
    return json.dumps(encoded, allow_nan=True), tensors


def loads(text: str, tensors: Mapping[str, Any]) -> Any:
    """The value of :func:`dumps`' text, with its tensors taken from ``tensors``."""
    return _decode(json.loads(text), tensors)


def tensor_names(text: str) -> list[str]:
    """The names of the tensors a text refers to."""
    found: list[str] = []
    _collect(json.loads(text), found)
    return found


def _encode(value: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor], what: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        name = "/".join(path) or "value"
        while name in tensors:
            name += "~"
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return {"__numpy__": [value.dtype.name, value.item()]}
    if isinstance(value, list | tuple):
        items = [_encode(v, (*path, str(i)), tensors, what) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        pairs = [
            (_encode(k, (*path, "key"), tensors, what), _encode(v, (*path, str(k)), tensors, what))
            for k, v in value.items()
        ]
        if isinstance(value, Counter):
            return {"__counter__": [list(pair) for pair in pairs]}
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return dict(pairs)
        return {"__dict__": [list(pair) for pair in pairs]}
    where = "/".join(path) or "it"
    raise UnsupportedStateError(
        f"{what} holds a {type(value).__module__}.{type(value).__qualname__} at {where}; "
        "expman stores tensors, numbers, strings, lists, tuples and dicts (nothing is "
        "pickled): convert it to one of those"
    )


def _decode(value: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in inner)
        if tag == "__counter__":
            return Counter({_decode(k, tensors): _decode(v, tensors) for k, v in inner})
        if tag == "__dict__":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
        if tag == "__numpy__":
            return np.dtype(inner[0]).type(inner[1])
        if tag == "__tensor__":
            return tensors[inner]
    return {k: _decode(v, tensors) for k, v in value.items()}


def _collect(value: Any, found: list[str]) -> None:
    if isinstance(value, list):
        for item in value:
            _collect(item, found)
    elif isinstance(value, dict):
        if len(value) == 1 and "__tensor__" in value:
            found.append(value["__tensor__"])
        else:
            for item in value.values():
                _collect(item, found)
