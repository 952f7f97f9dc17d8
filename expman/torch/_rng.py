"""Random generator states (torch, CUDA, numpy, Python), per rank under torch.distributed."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["all_ranks", "broadcast_decision", "rank_and_world", "restore_rng", "rng_state"]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0 and 1 outside torch.distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rng_state() -> dict[str, Any]:
    """This process's generators, by name under ``rng/``."""
    state: dict[str, Any] = {"torch": torch.get_rng_state().numpy()}
    if torch.cuda.is_available():
        for device, generator in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda/{device}"] = generator.numpy()
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state["numpy/keys"] = np.asarray(keys)
    state["numpy/state"] = json.dumps([kind, int(position), int(has_gauss), float(gauss)])
    version, internal, gauss_next = random.getstate()
    state["python"] = json.dumps([version, list(internal), gauss_next])
    return state


def restore_rng(values: Mapping[str, Any]) -> None:
    """Set the generators from :func:`rng_state`'s names (those present)."""
    if "torch" in values:
        torch.set_rng_state(torch.from_numpy(np.array(values["torch"], copy=True)))
    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            generator = values.get(f"cuda/{device}")
            if generator is not None:
                torch.cuda.set_rng_state(torch.from_numpy(np.array(generator)), device)
    if "numpy/keys" in values:
        kind, position, has_gauss, gauss = json.loads(values["numpy/state"])
        np.random.set_state((kind, values["numpy/keys"], position, has_gauss, gauss))
    if "python" in values:
        version, internal, gauss_next = json.loads(values["python"])
        random.setstate((version, tuple(internal), gauss_next))


def _device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_decision(decision: bool) -> bool:
    """Rank 0's decision, on every rank (a collective: every rank calls it)."""
    flag = torch.tensor([int(decision)], device=_device())
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def all_ranks(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, gathered as bytes (a collective; never pickled)."""
    payload = json.dumps(
        {
            name: ["text", value]
            if isinstance(value, str)
            else [value.dtype.str, list(value.shape), base64.b64encode(value.tobytes()).decode()]
            for name, value in state.items()
        }
    ).encode()
    device, world = _device(), torch.distributed.get_world_size()
    size = torch.tensor([len(payload)], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8, device=device)
    mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine)
    return [
        _decode(bytes(data[: int(length.item())].cpu().numpy()))
        for data, length in zip(gathered, sizes, strict=True)
    ]


def _decode(payload: bytes) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, encoded in json.loads(payload).items():
        if encoded[0] == "text":
            state[name] = encoded[1]
        else:
            dtype, shape, data = encoded
            array = np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype))
            state[name] = array.reshape(shape).copy()
    return state
