"""Tensors as expman stores them, and the canonical names of a model's tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from expman.checkpoints._state import Bits

__all__ = [
    "canonical",
    "dtype_name",
    "empty_like_spec",
    "host_view",
    "tied_tensors",
    "to_numpy",
    "to_torch",
    "unwrap",
]

_BITS_DTYPES = {
    dtype: name
    for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if isinstance(dtype := getattr(torch, name, None), torch.dtype)
}
_BY_NAME = {name: dtype for dtype, name in _BITS_DTYPES.items()}
_UINT = {1: (torch.uint8, np.uint8), 2: (torch.int16, np.uint16)}
_WRAPPER_ATTRIBUTE = "_orig_mod"


def to_numpy(tensor: torch.Tensor) -> np.ndarray[Any, Any] | Bits:
    """A host copy (or a view, for a contiguous CPU tensor) in a form expman stores."""
    host = tensor.detach().cpu().contiguous()
    name = _BITS_DTYPES.get(host.dtype)
    if name is not None:
        carrier, unsigned = _UINT[host.element_size()]
        return Bits(host.view(carrier).numpy().view(unsigned), name)
    array: np.ndarray[Any, Any] = host.numpy()
    return array


def host_view(tensor: torch.Tensor) -> np.ndarray[Any, Any] | Bits | None:
    """The tensor's own memory as a writeable array (a CPU contiguous tensor), else None."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        return None
    return to_numpy(tensor)


def to_torch(value: Any) -> torch.Tensor:
    """A CPU tensor of a value read from a checkpoint (sharing the array's memory)."""
    if isinstance(value, Bits):
        carrier, _ = _UINT[value.array.dtype.itemsize]
        signed = value.array.view(np.int16) if carrier is torch.int16 else value.array
        return torch.from_numpy(np.ascontiguousarray(signed)).view(_BY_NAME[value.dtype])
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value if value.flags.writeable else value.copy())
    return torch.tensor(value)


def empty_like_spec(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """An uninitialised CPU tensor of a recorded shape and dtype name."""
    found = _BY_NAME.get(dtype) or getattr(torch, dtype, None)
    if not isinstance(found, torch.dtype):
        raise TypeError(f"unknown dtype {dtype!r}")
    return torch.empty(shape, dtype=found)


def dtype_name(tensor: torch.Tensor) -> str:
    return _BITS_DTYPES.get(tensor.dtype) or str(tensor.dtype).removeprefix("torch.")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``torch.compile``, DDP and DataParallel wrappers."""
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:
        inner = getattr(model, _WRAPPER_ATTRIBUTE, None)
        if isinstance(inner, torch.nn.Module):
            model = inner
        elif isinstance(model, parallel) and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def canonical(name: str) -> str:
    """A tensor or module name without the ``_orig_mod`` parts of compiled submodules."""
    return ".".join(part for part in name.split(".") if part != _WRAPPER_ATTRIBUTE)


def tied_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{name: first name}`` for each tensor that is the same tensor as an earlier one."""
    first: dict[tuple[Any, ...], str] = {}
    tied: dict[str, str] = {}
    for name, tensor in tensors.items():
        if tensor.numel() == 0:
            continue
        key = (
            tensor.device,
            tensor.data_ptr(),
            tensor.dtype,
            tuple(tensor.shape),
            tuple(tensor.stride()),
        )
        if key in first:
            tied[name] = first[key]
        else:
            first[key] = name
    return tied
