"""The checkpoint file format: one self-describing HDF5 file per checkpoint.

This is the only module that talks to h5py. ``docs/checkpoint-format.md``
specifies the layout; ``tests/test_format.py`` checks written files against it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from expman._errors import CheckpointCorruptError, CheckpointFormatError
from expman._version import __version__
from expman.checkpoints._architecture import Architecture, TensorSpec
from expman.checkpoints._durable import phase
from expman.checkpoints._state import Bits, Leaf, LeafKind

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointMetadata",
    "TensorRecord",
    "checksum",
    "read_metadata",
    "read_tensors",
    "tensor_path",
    "write_checkpoint",
]

FORMAT_NAME = "expman-checkpoint"
FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHECKSUM_ALGORITHM = "xxh3-64"
_COMPRESSIONS = ("gzip", "lzf")
_READ_CHUNK = 16 * 2**20


@dataclass(frozen=True)
class TensorRecord:
    """Where and how one tensor is stored in a checkpoint file."""

    name: str
    path: str
    kind: LeafKind
    checksum: str


@dataclass(frozen=True)
class CheckpointMetadata:
    """Everything about a checkpoint except its tensor values.

    Attributes:
        path: the checkpoint file.
        step: the training step it was saved at.
        wall_time: seconds since the epoch when it was saved.
        metrics: the metrics given to ``save``.
        params: the run's parameters, when known.
        architecture: every tensor's name, shape and dtype, and the model config.
        experiment: the experiment that wrote it, when known.
        code_commit: the git commit of the code that wrote it, when known.
        versions: the library versions that wrote it.
        tensors: where each tensor is stored, with its checksum.
        size: the file's size in bytes.
    """

    path: Path
    format_version: int
    step: int
    wall_time: float
    metrics: Mapping[str, float]
    params: Mapping[str, Any]
    architecture: Architecture
    experiment: str | None
    code_commit: str | None
    versions: Mapping[str, str]
    tensors: tuple[TensorRecord, ...]
    size: int


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


def checksum(value: np.ndarray[Any, Any] | str) -> str:
    """``xxh3-64:<hex>`` of a value's C-order bytes (UTF-8 for a string)."""
    if isinstance(value, str):
        data: Any = value.encode("utf-8")
    else:
        data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    return f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_64_hexdigest(data)}"


def write_checkpoint(
    path: Path,
    leaves: Sequence[Leaf],
    *,
    step: int,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
    architecture: Architecture,
    experiment: str | None,
    code_commit: str | None,
    compression: str | None = None,
) -> None:
    """Write a complete checkpoint file at ``path`` (a temporary name; not fsynced)."""
    if compression is not None and compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be one of {_COMPRESSIONS} or None")
    wall_time = time.time()
    with (
        ThreadPoolExecutor(1, thread_name_prefix="expman-checksum") as hasher,
        h5py.File(path, "w") as f,
    ):
        # Checksums are computed on a second thread while this one writes the
        # data (both release the GIL), then stored as attributes.
        checksums = _checksums(hasher, leaves)
        root = f.attrs
        root["format"] = FORMAT_NAME
        root["format_version"] = FORMAT_VERSION
        root["step"] = np.int64(step)
        root["wall_time"] = wall_time
        root["created"] = datetime.fromtimestamp(wall_time, UTC).isoformat(timespec="seconds")
        root["architecture_digest"] = architecture.digest
        root["tensor_count"] = len(leaves)
        if experiment:
            root["experiment"] = experiment
        if code_commit:
            root["code_commit"] = code_commit
        for library, version in _library_versions().items():
            root[f"{library}_version"] = version
        datasets = [_write_leaf(f, leaf, compression) for leaf in leaves]
        records = [
            _record(dataset, leaf, digest.result())
            for dataset, leaf, digest in zip(datasets, leaves, checksums, strict=True)
        ]
        meta = f.create_group("meta")
        meta["architecture"] = _json(architecture.to_json())
        meta["metrics"] = _json(dict(metrics))
        meta["params"] = _json(dict(params))
        meta["tensors"] = _json(
            [
                {"name": r.name, "path": r.path, "kind": r.kind, "checksum": r.checksum}
                for r in records
            ]
        )


def _checksums(hasher: ThreadPoolExecutor, leaves: Sequence[Leaf]) -> list[Future[str]]:
    """Each leaf's checksum, computed once for tied leaves (``same_as``)."""
    futures: dict[str, Future[str]] = {}
    for leaf in leaves:
        shared = futures.get(leaf.same_as) if leaf.same_as else None
        futures[leaf.name] = shared or hasher.submit(checksum, leaf.value)
    return [futures[leaf.name] for leaf in leaves]


def _write_leaf(f: h5py.File, leaf: Leaf, compression: str | None) -> h5py.Dataset:
    phase("write")
    path = tensor_path(leaf.name)
    if leaf.same_as is not None:
        # A tied tensor: a second hard link to the dataset already written, so
        # it is stored once; its attributes are the first name's.
        f[path] = f[tensor_path(leaf.same_as)]
        dataset: h5py.Dataset = f[path]
        return dataset
    value = leaf.value
    if isinstance(value, str):
        return f.create_dataset(path, data=value, dtype=h5py.string_dtype("utf-8"))
    if compression and value.ndim and value.size:
        return f.create_dataset(path, data=value, compression=compression, chunks=True)
    return f.create_dataset(path, data=value)


def _record(dataset: h5py.Dataset, leaf: Leaf, digest: str) -> TensorRecord:
    if leaf.same_as is not None:
        return TensorRecord(leaf.name, tensor_path(leaf.name).lstrip("/"), leaf.kind, digest)
    dataset.attrs["name"] = leaf.name
    dataset.attrs["kind"] = leaf.kind
    dataset.attrs["checksum"] = digest
    if leaf.kind == "bits":
        dataset.attrs["dtype"] = leaf.dtype
    return TensorRecord(leaf.name, dataset.name.lstrip("/"), leaf.kind, digest)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _library_versions() -> dict[str, str]:
    return {
        "expman": __version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
    }


def read_metadata(path: Path) -> CheckpointMetadata:
    """Read a checkpoint's metadata without reading any tensor.

    Raises:
        CheckpointCorruptError: the file is not HDF5, truncated or damaged.
        CheckpointFormatError: the file was not written by expman, or by a newer one.
    """
    with _open(path) as f:
        return _metadata(path, f)


def _open(path: Path) -> h5py.File:
    with open(path, "rb") as handle:
        signature = handle.read(len(HDF5_SIGNATURE))
    if signature != HDF5_SIGNATURE:
        raise CheckpointCorruptError(
            f"{path} is not an HDF5 file (damaged, or not a checkpoint): "
            "restore another step, or move the file away"
        )
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise CheckpointCorruptError(
            f"{path} is truncated or damaged ({_first_line(error)}): "
            "restore another step, or move the file away"
        ) from error


def _metadata(path: Path, f: h5py.File) -> CheckpointMetadata:
    attrs = f.attrs
    if _text(attrs.get("format")) != FORMAT_NAME:
        raise CheckpointFormatError(
            f"{path} is an HDF5 file that expman did not write (no format attribute "
            f"{FORMAT_NAME!r}): give the path of an expman checkpoint"
        )
    version = int(attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{path} has checkpoint format version {version}, newer than this expman "
            f"reads ({FORMAT_VERSION}): upgrade expman to read it"
        )
    try:
        tensors = tuple(
            TensorRecord(str(t["name"]), str(t["path"]), t["kind"], str(t["checksum"]))
            for t in _read_json(f, "meta/tensors")
        )
        return CheckpointMetadata(
            path=path,
            format_version=version,
            step=int(attrs["step"]),
            wall_time=float(attrs["wall_time"]),
            metrics=_read_json(f, "meta/metrics"),
            params=_read_json(f, "meta/params"),
            architecture=Architecture.from_json(_read_json(f, "meta/architecture")),
            experiment=_text(attrs.get("experiment")),
            code_commit=_text(attrs.get("code_commit")),
            versions={
                key.removesuffix("_version"): str(_text(attrs[key]))
                for key in attrs
                if key.endswith("_version") and key != "format_version"
            },
            tensors=tensors,
            size=os.path.getsize(path),
        )
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise CheckpointCorruptError(
            f"{path} has damaged metadata ({_first_line(error)}): "
            "restore another step, or move the file away"
        ) from error


def _read_json(f: h5py.File, path: str) -> Any:
    dataset = f[path]
    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "OS":
        raise TypeError(f"{path} is not a text dataset")
    return json.loads(dataset.asstr()[()])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_tensors(
    metadata: CheckpointMetadata,
    names: Sequence[str],
    destinations: Mapping[str, Any],
) -> dict[str, Any]:
    """Read the named tensors, verifying each checksum.

    A destination numpy array of the same shape and dtype that is writeable and
    C-contiguous is filled in place (read straight from the file); otherwise a
    new value is returned. Values come back as the kind they were saved as.

    Raises:
        CheckpointCorruptError: a tensor fails its checksum or cannot be read.
    """
    records = {record.name: record for record in metadata.tensors}
    specs = metadata.architecture.by_name()
    path = metadata.path
    read: list[tuple[TensorRecord, np.ndarray[Any, Any] | str, Future[str]]] = []
    with (
        _open(path) as f,
        open(path, "rb", buffering=0) as raw,
        ThreadPoolExecutor(1, thread_name_prefix="expman-checksum") as hasher,
    ):
        for name in names:
            record = records[name]
            try:
                value, digest = _read_record(
                    f, raw.fileno(), hasher, record, specs[name], destinations.get(name)
                )
            except (KeyError, TypeError, ValueError, OSError) as error:
                raise CheckpointCorruptError(
                    f"{path} cannot be read at tensor {name!r} ({_first_line(error)}): "
                    "restore another step, or move the file away"
                ) from error
            read.append((record, value, digest))
        result: dict[str, Any] = {}
        for record, value, digest in read:
            found = digest.result()
            if found != record.checksum:
                raise CheckpointCorruptError(
                    f"{path} is corrupt: tensor {record.name!r} fails its checksum (recorded "
                    f"{record.checksum}, found {found}): restore another step, or move the "
                    "file away"
                )
            try:
                result[record.name] = _as_kind(value, record.kind, specs[record.name].dtype)
            except TypeError as error:
                raise CheckpointCorruptError(
                    f"{path} cannot be read at tensor {record.name!r} ({error}): "
                    "restore another step, or move the file away"
                ) from error
    return result


def _read_record(
    f: h5py.File,
    fd: int,
    hasher: ThreadPoolExecutor,
    record: TensorRecord,
    spec: TensorSpec,
    destination: Any,
) -> tuple[np.ndarray[Any, Any] | str, Future[str]]:
    """Read one tensor; its checksum is computed on ``hasher`` meanwhile."""
    if record.path != tensor_path(record.name):
        raise ValueError(f"unexpected storage path {record.path!r}")
    dataset = f.get(record.path)
    if not isinstance(dataset, h5py.Dataset) or dataset.file.filename != f.filename:
        raise TypeError("not a dataset of this file")
    if dataset.is_virtual or dataset.external:
        raise TypeError("external or virtual storage is not accepted")
    if record.kind == "str":
        if dataset.dtype.kind != "O" or dataset.shape != () or spec.dtype != "str":
            raise TypeError("not a string")
        text = str(dataset.asstr()[()])
        return text, hasher.submit(checksum, text)
    stored = dataset.dtype.name if record.kind != "bits" else spec.dtype
    if (
        dataset.shape != spec.shape
        or stored != spec.dtype
        or (record.kind == "bits" and dataset.dtype.kind != "u")
    ):
        raise ValueError(
            f"stored as {list(dataset.shape)} {dataset.dtype.name}, recorded as "
            f"{list(spec.shape)} {spec.dtype}"
        )
    if dataset.dtype.kind not in "biufc" or dataset.dtype.fields is not None:
        raise TypeError(f"dtype {dataset.dtype} is not numeric")
    return _read_array(dataset, fd, hasher, destination)


def _read_array(
    dataset: h5py.Dataset, fd: int, hasher: ThreadPoolExecutor, destination: Any
) -> tuple[np.ndarray[Any, Any], Future[str]]:
    """Read into ``destination`` when it fits, hashing each chunk as the next is read.

    A contiguous, native-order dataset is read straight from its file offset
    into the array, 16 MiB at a time; anything else goes through HDF5.
    """
    dtype = np.dtype(dataset.dtype)
    fits = (
        isinstance(destination, np.ndarray)
        and destination.shape == dataset.shape
        and destination.dtype == dtype
        and destination.flags.c_contiguous
        and destination.flags.writeable
    )
    target = destination if fits else np.empty(dataset.shape, dtype)
    data = target.reshape(-1).view(np.uint8).data
    state = xxhash.xxh3_64()
    offset = dataset.id.get_offset() if dataset.chunks is None and dtype.isnative else None
    if data.nbytes and offset is not None:
        for start in range(0, data.nbytes, _READ_CHUNK):
            chunk = data[start : start + _READ_CHUNK]
            _read_exactly(fd, chunk, offset + start)
            hasher.submit(state.update, chunk)
    elif data.nbytes:
        dataset.read_direct(target)
        hasher.submit(state.update, data)
    return target, hasher.submit(lambda: f"{CHECKSUM_ALGORITHM}:{state.hexdigest()}")


def _read_exactly(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        count = os.preadv(fd, [view], offset)
        if count == 0:
            raise OSError("the file ends inside a tensor")
        view, offset = view[count:], offset + count


def _as_kind(value: np.ndarray[Any, Any] | str, kind: str, dtype: str) -> Any:
    if isinstance(value, str) or kind == "array":
        return value
    if kind == "bits":
        return Bits(value, dtype)
    array = value
    if array.shape != ():
        raise TypeError(f"a {kind} value must be a scalar")
    if kind == "numpy":
        return array[()]
    if kind in ("bool", "int", "float"):
        return array.item()
    raise TypeError(f"unknown kind {kind!r}")
