"""The checkpoint file format: one self-describing HDF5 file per checkpoint.

This is the only module that talks to h5py. ``docs/checkpoint-format.md``
specifies the layout; ``tests/test_format.py`` checks written files against it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import xxhash

from expman._errors import (
    CHECKPOINT_REMEDY,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointNotFoundError,
)
from expman._version import __version__
from expman.checkpoints._architecture import Architecture, TensorSpec
from expman.checkpoints._durable import allocate, phase, read_at, reserve_space, write_at
from expman.checkpoints._layout import packed_path, tensor_path
from expman.checkpoints._sandbox import examine, is_sound, stat_key
from expman.checkpoints._state import Bits, Leaf, LeafKind, dtype_name
from expman.checkpoints._validate import (
    META_DATASETS,
    PackedDataset,
    TensorStorage,
    check_depth,
    check_links,
    check_meta_dataset,
    check_objects,
    check_same_file,
    check_storage,
    check_tensor_sizes,
    checked_architecture,
    checked_manifest,
    checked_mapping,
    checked_packed_dataset,
    checked_root_attributes,
    checked_tensor_dataset,
    damaged,
    open_regular_file,
    packed_tensor,
    read_format_name,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PACK_MAX_BYTES",
    "CheckpointMetadata",
    "TensorRecord",
    "checksum",
    "examine_here",
    "read_metadata",
    "read_tensors",
    "tensor_path",
    "write_checkpoint",
]

FORMAT_NAME = "expman-checkpoint"
FORMAT_VERSION = 2
PACK_MAX_BYTES = 2**20
"""Tensors of at most this many bytes are packed into one dataset per dtype by default."""
CHECKSUM_ALGORITHM = "xxh3-64"
_COMPRESSIONS = ("gzip", "lzf")
_READ_CHUNK = 16 * 2**20
# A value up to this size is hashed on the caller's thread: handing it to the
# hasher thread (a future, a queue entry, a wake-up) costs more than xxh3 does.
_INLINE_HASH_BYTES = 2**20


class _Checksum(Protocol):
    def result(self) -> str: ...


@dataclass(frozen=True)
class _Computed:
    """A checksum computed on the caller's thread, read like a hasher's future."""

    value: str

    def result(self) -> str:
        return self.value


@dataclass(frozen=True)
class TensorRecord:
    """Where and how one tensor is stored in a checkpoint file.

    ``path`` is the tensor's own dataset, or, with ``offset`` (in elements),
    the ``packed/<dtype>`` dataset it is packed into.
    """

    name: str
    path: str
    kind: LeafKind
    checksum: str
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The tensor's manifest entry (``/meta/tensors``)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "checksum": self.checksum,
        }
        if self.offset is not None:
            entry["offset"] = self.offset
        return entry


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
    pack_max_bytes: int = PACK_MAX_BYTES,
) -> CheckpointMetadata:
    """Write a complete checkpoint file at ``path`` (a temporary name; not fsynced).

    Arrays of at most ``pack_max_bytes`` bytes (0: none) are packed into one
    dataset per dtype; every other tensor gets its own dataset.

    Returns its metadata, as :func:`read_metadata` would read it back.
    """
    if compression is not None and compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be one of {_COMPRESSIONS} or None")
    wall_time = time.time()
    texts = {
        "architecture": _json(architecture.to_json()),
        "metrics": _json(dict(metrics)),
        "params": _json(dict(params)),
    }
    # HDF5 must never meet a full disk: a failed write inside it, or at its
    # close, leaves ids it cannot free and can crash the interpreter. So the
    # file's room is reserved before HDF5 opens it (ENOSPC is a plain OSError
    # then), allocated as soon as HDF5 has created it, and the surplus cut after.
    room = _size_bound(leaves, texts)
    reserve_space(path, room)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="expman-checksum") as hasher,
        h5py.File(path, "w") as f,
    ):
        allocate(path, room)
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
        f.create_group("tensors")
        placed = _write_packed(f, path, leaves, pack_max_bytes)
        for leaf in leaves:
            if leaf.name not in placed and leaf.same_as not in placed:
                _write_leaf(f, leaf, compression)
        records = [
            _record(leaf, digest.result(), placed)
            for leaf, digest in zip(leaves, checksums, strict=True)
        ]
        meta = f.create_group("meta")
        for name, text in texts.items():
            meta[name] = text
        meta["tensors"] = _json([record.to_json() for record in records])
    size = _end_of_file(path)
    os.truncate(path, size)
    return CheckpointMetadata(
        path=path,
        format_version=FORMAT_VERSION,
        step=int(step),
        wall_time=wall_time,
        metrics=json.loads(texts["metrics"]),
        params=json.loads(texts["params"]),
        architecture=Architecture(architecture.tensors, json.loads(_json(architecture.config))),
        experiment=experiment or None,
        code_commit=code_commit or None,
        versions=_library_versions(),
        tensors=tuple(records),
        size=size,
    )


def _size_bound(leaves: Sequence[Leaf], texts: Mapping[str, str]) -> int:
    """More bytes than the file can take: data, plus generous room for HDF5's own."""
    data = sum(
        len(leaf.value.encode()) if isinstance(leaf.value, str) else leaf.value.nbytes
        for leaf in leaves
    )
    # HDF5 takes about 2.7 KiB for a tensor two groups deep (object headers,
    # links, attributes, manifest entry): room for more, by name length and depth.
    headers = sum(2048 + 1024 * leaf.name.count("/") + 8 * len(leaf.name) for leaf in leaves)
    text = sum(len(t.encode()) for t in texts.values())
    return data + data // 64 + headers + 3 * text + 2**16


def _end_of_file(path: Path) -> int:
    """Where HDF5 says the file ends (its superblock's end-of-file address)."""
    with open(path, "rb") as handle:
        superblock = handle.read(48)
    # Superblock version 0 with 8-byte addresses (what h5py writes by default):
    # the end-of-file address is at byte 40.
    if len(superblock) < 48 or superblock[8] != 0 or superblock[13] != 8:
        return os.path.getsize(path)
    return int.from_bytes(superblock[40:48], "little")


def _checksums(hasher: ThreadPoolExecutor, leaves: Sequence[Leaf]) -> list[_Checksum]:
    """Each leaf's checksum, computed once for tied leaves (``same_as``).

    Large values are hashed on ``hasher`` while this thread writes; small ones
    right here (see ``_INLINE_HASH_BYTES``).
    """
    futures: dict[str, _Checksum] = {}
    for leaf in leaves:
        shared = futures.get(leaf.same_as) if leaf.same_as else None
        futures[leaf.name] = shared or _checksum_of(hasher, leaf.value)
    return [futures[leaf.name] for leaf in leaves]


def _checksum_of(hasher: ThreadPoolExecutor, value: np.ndarray[Any, Any] | str) -> _Checksum:
    if isinstance(value, str) or value.nbytes <= _INLINE_HASH_BYTES:
        return _Computed(checksum(value))
    return hasher.submit(checksum, value)


def _record(leaf: Leaf, digest: str, placed: Mapping[str, tuple[str, int]]) -> TensorRecord:
    """A leaf's manifest entry: packed (a tied leaf where its first is), or its own dataset."""
    packed = placed.get(leaf.same_as or leaf.name)
    if packed is None:
        return TensorRecord(leaf.name, tensor_path(leaf.name), leaf.kind, digest)
    return TensorRecord(leaf.name, packed[0], leaf.kind, digest, packed[1])


def _write_packed(
    f: h5py.File, path: Path, leaves: Sequence[Leaf], max_bytes: int
) -> dict[str, tuple[str, int]]:
    """Pack every array of at most ``max_bytes`` bytes into one dataset per dtype.

    Returns each packed leaf's dataset path and element offset. Each dataset
    is allocated when created, then the arrays are written into it with
    ``pwritev``, many at a time, without copying: HDF5 creates one object per
    dtype instead of one a tensor (docs/benchmarks.md, "Many tensors").
    """
    if max_bytes <= 0:
        return {}
    groups: dict[str, list[np.ndarray[Any, Any]]] = {}
    placed: dict[str, tuple[str, int]] = {}
    lengths: dict[str, int] = {}
    for leaf in leaves:
        value = leaf.value
        if leaf.same_as is not None or isinstance(value, str) or value.nbytes > max_bytes:
            continue
        dtype = dtype_name(value.dtype)
        placed[leaf.name] = (packed_path(dtype), lengths.get(dtype, 0))
        lengths[dtype] = lengths.get(dtype, 0) + value.size
        groups.setdefault(dtype, []).append(value)
    if not groups:
        return placed
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for dtype, arrays in groups.items():
            offset = _create_packed(f, dtype, lengths[dtype])
            views = [np.ascontiguousarray(a).reshape(-1).view(np.uint8).data for a in arrays]
            phase("write")
            write_at(fd, views, offset)
    finally:
        os.close(fd)
    return placed


def _create_packed(f: h5py.File, dtype: str, length: int) -> int:
    """Create ``packed/<dtype>`` of ``length`` elements, allocated now; return its file offset."""
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.CONTIGUOUS)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # the arrays are written, nothing else
    dsid = h5py.h5d.create(
        f.id,
        packed_path(dtype).encode(),
        h5py.h5t.py_create(np.dtype(dtype), logical=True),
        h5py.h5s.create_simple((length,)),
        dcpl=plist,
        lcpl=_INTERMEDIATE_GROUPS,
    )
    return int(dsid.get_offset() or 0)


def _write_leaf(f: h5py.File, leaf: Leaf, compression: str | None) -> None:
    phase("write")
    path = tensor_path(leaf.name)
    if leaf.same_as is not None:
        # A tied tensor: a second hard link to the dataset already written, so
        # it is stored once.
        f[path] = f[tensor_path(leaf.same_as)]
        return
    value = leaf.value
    if isinstance(value, str):
        f.create_dataset(path, data=value, dtype=h5py.string_dtype("utf-8"))
    elif compression and value.ndim and value.size:
        f.create_dataset(path, data=value, compression=compression, chunks=True)
    else:
        dataset = _create_array(f, path, value)
        if leaf.kind == "bits":
            dataset.attrs["dtype"] = leaf.dtype


def _create_array(f: h5py.File, path: str, value: np.ndarray[Any, Any]) -> h5py.Dataset:
    """A contiguous dataset holding ``value``, through h5py's low-level API.

    h5py's ``create_dataset`` costs ~400 us a tensor in Python (it checks and
    converts every argument); this is the same HDF5 call, ~40 us, which is
    what keeps a 10,000-tensor checkpoint fast (docs/benchmarks.md).
    """
    array = np.asarray(value)  # not ascontiguousarray: it makes a 0-d array 1-d
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    space = h5py.h5s.create_simple(array.shape) if array.ndim else h5py.h5s.create(h5py.h5s.SCALAR)
    dtype = h5py.h5t.py_create(array.dtype, logical=True)
    dsid = h5py.h5d.create(f.id, path.encode(), dtype, space, lcpl=_INTERMEDIATE_GROUPS)
    if array.size:
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, array)
    return h5py.Dataset(dsid)


_INTERMEDIATE_GROUPS = h5py.h5p.create(h5py.h5p.LINK_CREATE)
_INTERMEDIATE_GROUPS.set_create_intermediate_group(True)


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

    The whole file is checked first (``docs/checkpoint-format.md``, "What a
    reader checks"), so nothing outside it is ever read.

    Raises:
        CheckpointCorruptError: the file is not HDF5, truncated or damaged.
        CheckpointFormatError: the file breaks the format: not written by expman,
            by a newer one, or holding links, external data or forged sizes.
        CheckpointReadError: the file is missing, unreadable or not a regular file.
    """
    fd, info = open_regular_file(path)
    try:
        if not is_sound(info):  # a stranger's file: HDF5 parses it first in the helper
            return _metadata_from_json(path, examine(path, info))
        with _open(path, info) as f:
            return _metadata(path, f, fd, info)
    finally:
        os.close(fd)


def examine_here(path: Path, *, whole: bool = False) -> dict[str, Any]:
    """What the sandbox's helper runs: every check of a read but reading tensor bytes.

    Returns the file's stat identity and metadata as JSON. Each tensor
    dataset is opened and checked as a read would check it, so that HDF5 has
    parsed every object a later read opens. A tensor that fails its check
    fails when it is read, as without the helper; with ``whole`` (a pulled
    file, checked before it is kept) it fails the file now.
    """
    fd, info = open_regular_file(path)
    try:
        with _open(path, info) as f:
            metadata = _metadata(path, f, fd, info)
            if whole:
                _checked_datasets(f, metadata, [t.name for t in metadata.tensors], fd, info.st_size)
            else:
                storages = _TensorStorages(f, metadata, fd, info.st_size)
                for record in metadata.tensors:
                    with contextlib.suppress(CheckpointError, *_READ_ERRORS):
                        storages.checked(record)
    finally:
        os.close(fd)
    return {"stat": list(stat_key(info)), "metadata": _metadata_to_json(metadata)}


def _metadata_to_json(metadata: CheckpointMetadata) -> dict[str, Any]:
    return {
        "format_version": metadata.format_version,
        "step": metadata.step,
        "wall_time": metadata.wall_time,
        "metrics": dict(metadata.metrics),
        "params": dict(metadata.params),
        "architecture": metadata.architecture.to_json(),
        "experiment": metadata.experiment,
        "code_commit": metadata.code_commit,
        "versions": dict(metadata.versions),
        "tensors": [[t.name, t.path, t.kind, t.checksum, t.offset] for t in metadata.tensors],
        "size": metadata.size,
    }


def _metadata_from_json(path: Path, data: Mapping[str, Any]) -> CheckpointMetadata:
    return CheckpointMetadata(
        path=path,
        format_version=data["format_version"],
        step=data["step"],
        wall_time=data["wall_time"],
        metrics=data["metrics"],
        params=data["params"],
        architecture=Architecture.from_json(data["architecture"]),
        experiment=data["experiment"],
        code_commit=data["code_commit"],
        versions=data["versions"],
        tensors=tuple(TensorRecord(*t) for t in data["tensors"]),
        size=data["size"],
    )


def _open(path: Path, info: os.stat_result) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as error:
        raise CheckpointCorruptError(
            f"{path} is truncated or damaged ({_first_line(error)}): {CHECKPOINT_REMEDY}"
        ) from error
    try:
        check_same_file(path, f, info)
    except BaseException:
        f.close()
        raise
    return f


def _metadata(path: Path, f: h5py.File, fd: int, info: os.stat_result) -> CheckpointMetadata:
    try:
        if read_format_name(f) != FORMAT_NAME:
            raise CheckpointFormatError(
                f"{path} is an HDF5 file that expman did not write (no format attribute "
                f"{FORMAT_NAME!r}): give the path of an expman checkpoint"
            )
        attrs = checked_root_attributes(path, f, FORMAT_VERSION)
        names = check_links(path, f)
        values = {name: _read_json(path, f, name, fd) for name in META_DATASETS}
        for name in ("architecture", "params"):
            check_depth(path, f"/meta/{name}", values[name])
        architecture = checked_architecture(path, values["architecture"])
        manifest = checked_manifest(path, values["tensors"], architecture, attrs.format_version)
        paths = [item["path"] for item in manifest]
        check_objects(path, names, paths)
        # Tensor datasets are checked the same way when read (read_tensors opens
        # each anyway); opening 10,000 of them here would slow every listing.
        check_storage(path, f, sorted(n for n in names if n.startswith("meta/")))
        return CheckpointMetadata(
            path=path,
            format_version=attrs.format_version,
            step=attrs.step,
            wall_time=attrs.wall_time,
            metrics=checked_mapping(path, "metrics", values["metrics"], numbers=True),
            params=checked_mapping(path, "params", values["params"]),
            architecture=architecture,
            experiment=attrs.experiment,
            code_commit=attrs.code_commit,
            versions=attrs.versions,
            tensors=tuple(
                TensorRecord(t["name"], t["path"], t["kind"], t["checksum"], t.get("offset"))
                for t in manifest
            ),
            size=info.st_size,
        )
    except CheckpointError:
        raise
    except _READ_ERRORS as error:
        raise damaged(path, _first_line(error)) from error


# What h5py and json raise for a damaged file: HDF5 errors come as OSError,
# KeyError, ValueError or RuntimeError; deeply nested JSON as RecursionError.
_READ_ERRORS = (KeyError, TypeError, ValueError, OSError, RuntimeError, OverflowError)


def _read_json(path: Path, f: h5py.File, name: str, fd: int) -> Any:
    dataset = check_meta_dataset(path, f, name, fd)
    return json.loads(dataset.asstr()[()])


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_tensors(
    metadata: CheckpointMetadata,
    names: Sequence[str],
    destinations: Mapping[str, Any],
) -> dict[str, Any]:
    """Read the named tensors, verifying each checksum.

    Every dataset to read is checked (storage in this file, layout, dtype,
    shape, size) before any tensor is read. A destination numpy array of the
    same shape and dtype that is writeable and C-contiguous is filled in place
    (read straight from the file); otherwise a new value is returned. Values
    come back as the kind they were saved as.

    Raises:
        CheckpointCorruptError: a tensor fails its checksum or cannot be read.
        CheckpointFormatError: a tensor's storage breaks the format.
        CheckpointNotFoundError: a name is not a tensor of the checkpoint.
    """
    records = {record.name: record for record in metadata.tensors}
    unknown = [name for name in names if name not in records]
    if unknown:
        raise CheckpointNotFoundError(
            f"{metadata.path} has no tensor {unknown[0]!r}: ask for one of the names "
            "its metadata lists"
        )
    specs = metadata.architecture.by_name()
    path = metadata.path
    fd, info = open_regular_file(path)
    try:
        if not is_sound(info):  # changed since its metadata was read: a stranger again
            examine(path, info)
        with (
            _open(path, info) as f,
            ThreadPoolExecutor(1, thread_name_prefix="expman-checksum") as hasher,
        ):
            if info.st_size != metadata.size:
                raise CheckpointCorruptError(
                    f"{path} changed after its metadata was read: read it again"
                )
            datasets = _checked_datasets(f, metadata, names, fd, info.st_size)
            small = _SmallReads(fd)
            read: dict[str, tuple[TensorRecord, np.ndarray[Any, Any] | str, _Checksum]] = {}
            tied: dict[Any, tuple[np.ndarray[Any, Any] | str, _Checksum]] = {}

            def read_one(name: str) -> None:
                record, storage, destination = records[name], datasets[name], destinations.get(name)
                # Tied tensors (one stored tensor under several names) share one array
                # unless each has its own destination: a read allocates no more than the
                # file holds.
                key = _tie_key(storage)
                if key in tied and not _fits(destination, storage):
                    read[name] = (record, *tied[key])
                    return
                try:
                    value, digest = _read_value(storage, fd, hasher, small, record, destination)
                except _READ_ERRORS as error:
                    raise _unreadable(path, name, error) from error
                tied.setdefault(key, (value, digest))
                read[name] = (record, value, digest)

            # The small tensors first, in few system calls, their checksums computed on
            # the hasher thread while the large ones are read (ties are in one group).
            first = [name for name in names if _read_together(records[name], datasets[name])]
            for name in first:
                read_one(name)
            small.read(path, hasher)
            for name in names:
                if name not in read:
                    read_one(name)
            return _verified(path, [read[name] for name in names], specs)
    finally:
        os.close(fd)


class _TensorStorages:
    """Checks where each tensor of an open file is stored; each packed dataset once."""

    def __init__(self, f: h5py.File, metadata: CheckpointMetadata, fd: int, size: int) -> None:
        self._f, self._metadata, self._fd, self._size = f, metadata, fd, size
        self._specs = metadata.architecture.by_name()
        self._packed: dict[str, PackedDataset] = {}

    def checked(self, record: TensorRecord) -> TensorStorage:
        path, spec = self._metadata.path, self._specs[record.name]
        if record.offset is None:
            return checked_tensor_dataset(
                path, self._f, record.path, record.kind, spec, self._size, self._fd
            )
        packed = self._packed.get(record.path)
        if packed is None:
            packed = checked_packed_dataset(path, self._f, record.path, self._size)
            self._packed[record.path] = packed
        return packed_tensor(packed, record.offset, spec)


def _checked_datasets(
    f: h5py.File, metadata: CheckpointMetadata, names: Sequence[str], fd: int, size: int
) -> dict[str, TensorStorage]:
    records = {record.name: record for record in metadata.tensors}
    storages = _TensorStorages(f, metadata, fd, size)
    datasets = {}
    for name in names:
        try:
            datasets[name] = storages.checked(records[name])
        except CheckpointError:
            raise
        except _READ_ERRORS as error:
            raise _unreadable(metadata.path, name, error) from error
    check_tensor_sizes(metadata.path, _stored_bytes(metadata.path, datasets), size)
    return datasets


def _stored_bytes(path: Path, datasets: Mapping[str, TensorStorage]) -> int:
    """The file bytes the tensors occupy: a tied tensor's count once, and none overlap.

    Tensors read from a byte range of the file (a contiguous dataset, a packed
    tensor) may share their exact range (ties) but never part of one, so that
    the arrays a read allocates add up to no more than the file's size.
    """
    stored: dict[Any, int] = {}
    spans: dict[tuple[int, int], str] = {}
    for name, storage in datasets.items():
        if storage.offset is None:
            stored[storage.identity] = storage.stored
        elif nbytes := _nbytes(storage):
            spans.setdefault((storage.offset, nbytes), name)
    end, last = 0, ""
    for (start, nbytes), name in sorted(spans.items()):
        if start < end:
            raise damaged(path, f"tensors {last!r:.60} and {name!r:.60} overlap in the file")
        end, last = start + nbytes, name
    return sum(stored.values()) + sum(nbytes for _, nbytes in spans)


def _nbytes(storage: TensorStorage) -> int:
    return math.prod(storage.shape) * storage.dtype.itemsize


def _unreadable(path: Path, name: str, error: BaseException) -> CheckpointCorruptError:
    return CheckpointCorruptError(
        f"{path} cannot be read at tensor {name!r} ({_first_line(error)}): {CHECKPOINT_REMEDY}"
    )


def _verified(
    path: Path,
    read: list[tuple[TensorRecord, np.ndarray[Any, Any] | str, _Checksum]],
    specs: Mapping[str, TensorSpec],
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for record, value, digest in read:
        found = digest.result()
        if found != record.checksum:
            raise CheckpointCorruptError(
                f"{path} is corrupt: tensor {record.name!r} fails its checksum (recorded "
                f"{record.checksum}, found {found}): {CHECKPOINT_REMEDY}"
            )
        try:
            result[record.name] = _as_kind(value, record.kind, specs[record.name].dtype)
        except TypeError as error:
            raise _unreadable(path, record.name, error) from error
    return result


def _read_value(
    storage: TensorStorage,
    fd: int,
    hasher: ThreadPoolExecutor,
    small: _SmallReads,
    record: TensorRecord,
    destination: Any,
) -> tuple[np.ndarray[Any, Any] | str, _Checksum]:
    """Read one checked tensor; a large one's checksum is computed on ``hasher`` meanwhile.

    A small one straight from the file is only queued on ``small``, which reads it later.
    """
    if record.kind == "str":
        assert storage.dataset is not None
        text = str(storage.dataset.asstr()[()])
        return text, _Computed(checksum(text))
    return _read_array(storage, fd, hasher, small, record.name, destination)


def _read_array(
    storage: TensorStorage,
    fd: int,
    hasher: ThreadPoolExecutor,
    small: _SmallReads,
    name: str,
    destination: Any,
) -> tuple[np.ndarray[Any, Any], _Checksum]:
    """Read into ``destination`` when it fits, hashing each chunk as the next is read.

    A contiguous, native-order dataset is read straight from its file offset
    into the array, 16 MiB at a time (a small one through ``small``); anything
    else goes through HDF5.
    """
    target = destination if _fits(destination, storage) else np.empty(storage.shape, storage.dtype)
    data = target.reshape(-1).view(np.uint8).data
    if data.nbytes <= _INLINE_HASH_BYTES:
        if data.nbytes and storage.offset is not None:
            return target, small.queue(storage.offset, data, name)
        if data.nbytes and storage.dataset is not None:
            storage.dataset.read_direct(target)
        return target, _Computed(f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_64_hexdigest(data)}")
    state = xxhash.xxh3_64()
    if data.nbytes and storage.offset is not None:
        for start in range(0, data.nbytes, _READ_CHUNK):
            chunk = data[start : start + _READ_CHUNK]
            read_at(fd, [chunk], storage.offset + start)
            hasher.submit(state.update, chunk)
    elif data.nbytes and storage.dataset is not None:
        storage.dataset.read_direct(target)
        hasher.submit(state.update, data)
    return target, hasher.submit(lambda: f"{CHECKSUM_ALGORITHM}:{state.hexdigest()}")


def _read_together(record: TensorRecord, storage: TensorStorage) -> bool:
    """Whether :func:`_read_array` queues this tensor on :class:`_SmallReads`."""
    return (
        record.kind != "str"
        and storage.offset is not None
        and _nbytes(storage) <= _INLINE_HASH_BYTES
    )


def _tie_key(storage: TensorStorage) -> tuple[Any, ...]:
    """The same for two names of one stored tensor (one dataset, or one packed range)."""
    where = storage.identity if storage.offset is None else storage.offset
    return (where, storage.shape, storage.dtype)


def _fits(destination: Any, storage: TensorStorage) -> bool:
    """Whether the tensor can be read straight into ``destination``."""
    return (
        isinstance(destination, np.ndarray)
        and destination.shape == storage.shape
        and destination.dtype == storage.dtype
        and destination.flags.c_contiguous
        and destination.flags.writeable
    )


class _SmallReads:
    """Small tensors read straight from the file, gathered into few system calls.

    Each is queued with where its bytes are; :meth:`read` reads every run of
    tensors lying end to end in the file (a packed dataset's tensors do) with
    one ``preadv``, then has all their checksums computed in one job on the
    hasher thread.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queued: list[tuple[int, memoryview, str]] = []
        self._checksums: Future[list[str]] | None = None

    def queue(self, offset: int, view: memoryview, name: str) -> _Checksum:
        self._queued.append((offset, view, name))
        return _SmallChecksum(self, len(self._queued) - 1)

    def read(self, path: Path, hasher: ThreadPoolExecutor) -> None:
        queued = sorted(self._queued, key=lambda item: item[0])
        start = 0
        while start < len(queued):
            end = start + 1
            while (
                end < len(queued)
                and queued[end - 1][0] + queued[end - 1][1].nbytes == queued[end][0]
            ):
                end += 1
            views = [view for _, view, _ in queued[start:end]]
            try:
                read_at(self._fd, views, queued[start][0])
            except OSError as error:
                raise _unreadable(path, queued[start][2], error) from error
            start = end
        views = [view for _, view, _ in self._queued]
        self._checksums = hasher.submit(
            lambda: [f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_64_hexdigest(view)}" for view in views]
        )

    def checksum(self, index: int) -> str:
        assert self._checksums is not None, "read() comes before the checksums"
        return self._checksums.result()[index]


@dataclass(frozen=True)
class _SmallChecksum:
    """The checksum of a tensor that :class:`_SmallReads` reads, computed after the read."""

    reads: _SmallReads
    index: int

    def result(self) -> str:
        return self.reads.checksum(self.index)


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
