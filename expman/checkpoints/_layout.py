"""Names in the checkpoint format: file names of checkpoints, HDF5 paths of tensors.

Pure (no I/O): the catalog scans directories with these rules and the reader
checks a file against them, without either importing h5py for it.
"""

from __future__ import annotations

import re

__all__ = ["checkpoint_filename", "packed_path", "step_of_filename", "tensor_path"]

_CHECKPOINT = re.compile(r"^ckpt-(\d{6,})\.h5$")


def checkpoint_filename(step: int) -> str:
    """``ckpt-<step>.h5``, the step zero-padded to 6 digits: the one name of a step."""
    return f"ckpt-{step:06d}.h5"


def step_of_filename(name: str) -> int | None:
    """The step a checkpoint file name stands for, or None if it is not a canonical name.

    Only the name :func:`checkpoint_filename` gives counts: ``ckpt-5.h5`` and
    ``ckpt-0000005.h5`` are not checkpoints of step 5.
    """
    match = _CHECKPOINT.match(name)
    if match is None:
        return None
    step = int(match[1])
    return step if checkpoint_filename(step) == name else None


def tensor_path(name: str) -> str:
    """The HDF5 path of a tensor: its name's components as groups, ``:0`` on the leaf.

    Components are escaped so that every name maps to its own path: ``%`` and
    ``:`` are percent-encoded, and the components HDF5 would treat
    specially (empty, ``.``, ``..``) are spelled ``%``, ``%2E`` and ``%2E%2E``.
    The ``:0`` suffix lets ``a/b`` and ``a/b/c`` coexist (``a/b:0`` beside the
    group ``a/b``).
    """
    return "tensors/" + "/".join(_escape(part) for part in name.split("/")) + ":0"


def _escape(component: str) -> str:
    if component == "":
        return "%"
    if component in (".", ".."):
        return "%2E" * len(component)
    return component.replace("%", "%25").replace(":", "%3A")


def packed_path(dtype: str) -> str:
    """The HDF5 path of the dataset that packs small tensors of one dtype: ``packed/<dtype>``."""
    return f"packed/{dtype}"
