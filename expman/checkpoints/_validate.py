"""What a reader checks before it reads: a checkpoint file reads only itself.

Every check of a file that may come from someone else lives here, apart from
how the format is read, so that a faster reader keeps them: only regular files
are opened; every link is a hard link and every object is one the format names;
the metadata datasets are plain scalar UTF-8 strings of bounded size stored in
this file; root attributes have their documented types and values; the manifest
agrees with the architecture; and each tensor dataset is stored in this file,
with an allowed layout, filter and dtype, the recorded shape, and a size that
fits the file. ``docs/checkpoint-format.md`` ("What a reader checks") is the
specification of this module.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from expman._errors import (
    CHECKPOINT_REMEDY,
    CheckpointCorruptError,
    CheckpointFormatError,
    CheckpointReadError,
)
from expman._text import has_control_character
from expman.checkpoints._architecture import Architecture, TensorSpec
from expman.checkpoints._layout import packed_path, step_of_filename, tensor_path

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "META_DATASETS",
    "PackedDataset",
    "RootAttributes",
    "TensorStorage",
    "check_depth",
    "check_links",
    "check_meta_dataset",
    "check_objects",
    "check_same_file",
    "check_storage",
    "check_tensor_sizes",
    "checked_architecture",
    "checked_manifest",
    "checked_mapping",
    "checked_packed_dataset",
    "checked_root_attributes",
    "checked_tensor_dataset",
    "damaged",
    "open_regular_file",
    "packed_tensor",
    "read_format_name",
    "refused",
]

MAX_METADATA_BYTES = 64 * 2**20
"""The largest JSON text a ``/meta`` dataset may hold (64 MiB)."""
MAX_JSON_DEPTH = 100
"""How deep the JSON of params, metrics and the model config may nest."""

META_DATASETS = ("architecture", "metrics", "params", "tensors")
KINDS = ("array", "numpy", "bool", "int", "float", "str", "bits")
NUMERIC_DTYPES = frozenset(
    np.dtype(name).name
    for name in (
        *("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
        *("float16", "float32", "float64", "longdouble", "complex64", "complex128"),
        "clongdouble",
    )
)
# Filters a tensor dataset may use: deflate (gzip) and lzf, both built into h5py.
# Any other filter id would make HDF5 look for a plugin library to load.
ALLOWED_FILTERS = frozenset({h5py.h5z.FILTER_DEFLATE, 32000})
# deflate expands at most 1032:1, so a compressed tensor declaring more is forged.
MAX_EXPANSION = 1032
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The carrier width of the ``bits`` dtypes expman.torch writes; another name may use any.
BITS_WIDTHS = {
    "bfloat16": 16,
    **dict.fromkeys(
        ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"), 8
    ),
}
# The dtype and shape a tensor of each kind has; "array" and "bits" are checked apart.
_SCALAR_KINDS = {"bool": "bool", "int": "int64", "float": "float64", "str": "str"}
_CHECKSUM = re.compile(r"^xxh3-64:[0-9a-f]{16}$")
_DTYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def refused(path: Path, detail: str) -> CheckpointFormatError:
    """The error for a file whose structure the format does not allow."""
    return CheckpointFormatError(
        f"{path} breaks the checkpoint format ({detail}): {CHECKPOINT_REMEDY}"
    )


def damaged(path: Path, detail: str) -> CheckpointCorruptError:
    """The error for a file whose metadata cannot be parsed or is inconsistent."""
    return CheckpointCorruptError(f"{path} has damaged metadata ({detail}): {CHECKPOINT_REMEDY}")


# -- the file itself -------------------------------------------------------------


def open_regular_file(path: Path) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading if it is a regular HDF5 file; return its descriptor and stat.

    Opened without blocking, so a FIFO named like a checkpoint never hangs the
    reader, and checked with ``fstat`` before a byte is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise CheckpointReadError(
            f"cannot read checkpoint {path} ({error.strerror or error}): "
            "check that it exists and is readable, or move it away"
        ) from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointReadError(
                f"cannot read checkpoint {path} (not a regular file): move it away"
            )
        try:
            signature = os.pread(fd, len(HDF5_SIGNATURE), 0)
        except OSError as error:
            raise CheckpointReadError(
                f"cannot read checkpoint {path} ({error.strerror or error}): "
                "check that it is readable, or move it away"
            ) from error
        if signature != HDF5_SIGNATURE:
            raise CheckpointCorruptError(
                f"{path} is not an HDF5 file (damaged, or not a checkpoint): {CHECKPOINT_REMEDY}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def check_same_file(path: Path, f: h5py.File, expected: os.stat_result) -> None:
    """The file HDF5 opened is the one checked by :func:`open_regular_file`."""
    opened = os.fstat(f.id.get_vfd_handle())
    if (opened.st_dev, opened.st_ino) != (expected.st_dev, expected.st_ino):
        raise CheckpointReadError(
            f"cannot read checkpoint {path} (it was replaced while being opened): try again"
        )


# -- structure: links and objects ------------------------------------------------


def check_links(path: Path, f: h5py.File) -> set[str]:
    """Every link's name, after checking that each one is a hard link.

    HDF5 lists the links without following soft or external ones, and visits a
    group reached twice only once.
    """
    names: set[str] = set()
    bad: list[tuple[str, int]] = []

    def visit(name: bytes, info: Any) -> None:
        text = name.decode("utf-8", "backslashreplace")
        names.add(text)
        if info.type != h5py.h5l.TYPE_HARD:
            bad.append((text, info.type))
        return None

    f.id.links.visit(visit, info=True)
    if bad:
        name, kind = bad[0]
        label = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}
        what = label.get(kind, "a user-defined link")
        raise refused(path, f"{'/' + name!r:.80} is {what}; only hard links are allowed")
    return names


def check_objects(path: Path, names: set[str], tensor_paths: Iterable[str]) -> None:
    """The file holds no object the format does not name (extra ``/meta`` datasets allowed).

    A missing tensor is not checked here: reading it fails, and metadata stays readable.
    """
    expected = {"meta", "tensors", *(f"meta/{n}" for n in META_DATASETS)}
    for tensor in tensor_paths:
        parts = tensor.split("/")
        expected.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    extra = sorted(n for n in names - expected if not (n.startswith("meta/") and "/" not in n[5:]))
    if extra:
        raise refused(path, f"unexpected object {'/' + extra[0]!r:.80}")


def check_meta_dataset(path: Path, f: h5py.File, name: str, fd: int) -> h5py.Dataset:
    """A ``/meta`` dataset: a scalar UTF-8 string stored in this file, at most 64 MiB."""
    where = f"/meta/{name}"
    obj = f.get(f"meta/{name}")
    if obj is None:
        raise damaged(path, f"{where!r} is missing")
    if not isinstance(obj, h5py.Dataset):
        raise refused(path, f"{where!r} is not a dataset")
    _check_storage(path, obj, where)
    info = h5py.check_string_dtype(obj.dtype)
    if obj.shape != () or info is None or info.encoding != "utf-8" or info.length is not None:
        raise refused(path, f"{where!r} is not a scalar UTF-8 string")
    _check_string_length(path, obj, where, fd)
    return obj


def _check_string_length(path: Path, dataset: h5py.Dataset, where: str, fd: int) -> None:
    """A scalar variable-length string holds at most :data:`MAX_METADATA_BYTES`.

    Such a string is stored as its length (uint32) and a heap id: the length
    is read here, before HDF5 allocates room for the text.
    """
    plist = dataset.id.get_create_plist()
    offset = dataset.id.get_offset()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or offset is None:
        raise refused(path, f"{where!r:.80} is not stored contiguously")
    head = os.pread(fd, 4, offset)
    if len(head) != 4:
        raise damaged(path, f"{where!r:.80} lies outside the file")
    length = int.from_bytes(head, "little")
    if length > MAX_METADATA_BYTES:
        raise refused(
            path,
            f"{where!r:.80} declares {length} bytes, more than the {MAX_METADATA_BYTES} allowed",
        )


def check_storage(path: Path, f: h5py.File, names: Iterable[str]) -> None:
    """Each named ``/meta`` object is a dataset stored here (tensors: when they are read).

    Checked from the dataset's creation properties, without reading it: no
    external storage, not virtual, no filter but gzip or lzf.
    """
    for name in names:
        try:
            dataset = h5py.h5d.open(f.id, name.encode())
        except (KeyError, OSError, ValueError, RuntimeError) as error:
            raise refused(path, f"{'/' + name!r:.80} is not a dataset") from error
        _storage(path, dataset, "/" + name)


def _check_storage(path: Path, dataset: h5py.Dataset, where: str) -> None:
    _storage(path, dataset.id, where)


def _storage(path: Path, dataset: Any, where: str) -> tuple[int, set[int]]:
    """A dataset's layout and filters, refusing external or virtual storage and other filters."""
    plist = dataset.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise refused(path, f"{where!r:.80} is a virtual dataset")
    if plist.get_external_count():
        raise refused(path, f"{where!r:.80} has external storage")
    filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    if not filters <= ALLOWED_FILTERS:
        raise refused(path, f"{where!r:.80} uses a filter other than gzip or lzf")
    return layout, filters


# -- attributes ------------------------------------------------------------------


@dataclass(frozen=True)
class RootAttributes:
    """The root attributes a reader uses, checked."""

    format_version: int
    step: int
    wall_time: float
    experiment: str | None
    code_commit: str | None
    versions: Mapping[str, str]


def read_format_name(f: h5py.File) -> str | None:
    """The ``format`` attribute, if it is a short string."""
    return _string_attribute(f, "format", required=False)


def checked_root_attributes(path: Path, f: h5py.File, supported: int) -> RootAttributes:
    """Check ``format_version``, ``step`` (against the file name), ``wall_time`` and strings."""
    version = _attribute(f, "format_version")
    if not _is_integer(version) or int(version) < 1:
        raise refused(path, f"format_version {_show(version)} is not a positive integer")
    if int(version) > supported:
        raise CheckpointFormatError(
            f"{path} has checkpoint format version {int(version)}, newer than this expman "
            f"reads ({supported}): upgrade expman to read it"
        )
    step = _attribute(f, "step")
    if not _is_integer(step) or int(step) < 0:
        raise refused(path, f"step {_show(step)} is not a non-negative integer")
    named = step_of_filename(path.name)
    if named is not None and int(step) != named:
        raise refused(path, f"step {int(step)} differs from the file name's step {named}")
    wall_time = _attribute(f, "wall_time")
    if not (isinstance(wall_time, np.floating | float) and math.isfinite(float(wall_time))):
        raise refused(path, f"wall_time {_show(wall_time)} is not a finite number")
    versions = {
        key.removesuffix("_version"): _string_attribute(f, key)
        for key in f.attrs
        if key.endswith("_version") and key != "format_version"
    }
    return RootAttributes(
        format_version=int(version),
        step=int(step),
        wall_time=float(wall_time),
        experiment=_string_attribute(f, "experiment", required=False),
        code_commit=_string_attribute(f, "code_commit", required=False),
        versions={k: v for k, v in versions.items() if v is not None},
    )


def _attribute(f: h5py.File, name: str) -> Any:
    """A scalar numeric attribute's value (None if absent), checked before it is read."""
    if name not in f.attrs:
        return None
    attr = f.attrs.get_id(name)
    if h5py.check_string_dtype(attr.dtype) is not None:
        return _string_attribute(f, name)
    if attr.shape != () or attr.dtype.kind not in "iuf" or attr.dtype.itemsize > 8:
        return f"<{attr.dtype} {list(attr.shape or ())}>"
    return f.attrs[name]


def _string_attribute(f: h5py.File, name: str, *, required: bool = True) -> str | None:
    if name not in f.attrs:
        if required:
            raise KeyError(name)
        return None
    attr = f.attrs.get_id(name)
    info = h5py.check_string_dtype(attr.dtype)
    if attr.shape != () or info is None or (info.length or 0) > 2**16:
        return None
    value = f.attrs[name]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= 2**16 else None


def _is_integer(value: Any) -> bool:
    return isinstance(value, np.integer | int) and not isinstance(value, bool | np.bool_)


def _show(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- metadata JSON -----------------------------------------------------------------


def checked_mapping(path: Path, name: str, value: Any, *, numbers: bool = False) -> dict[str, Any]:
    """``/meta/metrics`` or ``/meta/params``: a JSON object (of numbers, for metrics)."""
    if not isinstance(value, dict):
        raise damaged(path, f"/meta/{name} is not a JSON object")
    if numbers:
        for key, item in value.items():
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise damaged(path, f"metric {key!r} is not a number")
            if has_control_character(key):  # save refuses them: listings print names raw
                raise damaged(path, f"metric {key!r} has a control character in its name")
    return value


def check_depth(path: Path, where: str, value: Any) -> None:
    """JSON from ``where`` nests at most :data:`MAX_JSON_DEPTH` levels deep.

    A deeper one would make whoever parses it again (the reader of the
    helper's answer, a caller deep in its own stack) hit Python's recursion
    limit: the same file would read or not depending on the caller.
    """
    level = [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise damaged(path, f"{where} nests deeper than {MAX_JSON_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            level.extend((child, depth + 1) for child in children)


def checked_architecture(path: Path, value: Any) -> Architecture:
    """``/meta/architecture``: unique names, shapes of non-negative ints, short dtype names."""
    if not isinstance(value, dict) or not isinstance(value.get("tensors"), list):
        raise damaged(path, "/meta/architecture has no tensor list")
    config = value.get("config", {})
    if not isinstance(config, dict):
        raise damaged(path, "/meta/architecture has a config that is not an object")
    specs = []
    for item in value["tensors"]:
        if not isinstance(item, dict) or set(item) != {"name", "shape", "dtype"}:
            raise damaged(path, "/meta/architecture has a malformed tensor entry")
        name, shape, dtype = item["name"], item["shape"], item["dtype"]
        if (
            not isinstance(name, str)
            or not isinstance(dtype, str)
            or not _DTYPE_NAME.match(dtype)
            or not isinstance(shape, list)
            or len(shape) > 64
            or not all(_is_integer(d) and 0 <= d < 2**63 for d in shape)
        ):
            raise damaged(path, f"/meta/architecture has a malformed entry for {name!r:.60}")
        specs.append(TensorSpec(name, tuple(shape), dtype))
    architecture = Architecture.of(specs, config)
    if len(architecture.by_name()) != len(specs):
        raise damaged(path, "/meta/architecture names a tensor twice")
    return architecture


def checked_manifest(
    path: Path, value: Any, architecture: Architecture, version: int
) -> list[dict[str, Any]]:
    """``/meta/tensors``: one well-formed entry per tensor of the architecture, at its path.

    A tensor has its own dataset at its name's path, or (format version 2) an
    ``offset`` into the packed dataset of its stored dtype.
    """
    if not isinstance(value, list):
        raise damaged(path, "/meta/tensors is not a list")
    keys = {"name", "path", "kind", "checksum"}
    specs = architecture.by_name()
    for item in value:
        if (
            not isinstance(item, dict)
            or set(item) - {"offset"} != keys
            or not all(isinstance(item[k], str) for k in keys)
        ):
            raise damaged(path, "/meta/tensors has a malformed entry")
        if item["kind"] not in KINDS or not _CHECKSUM.match(item["checksum"]):
            raise damaged(path, f"/meta/tensors has a malformed entry for {item['name']!r:.60}")
        spec = specs.get(item["name"])
        if spec is not None and not _kind_fits(item["kind"], spec):
            raise damaged(
                path,
                f"/meta/tensors records {item['name']!r:.60} as {item['kind']}, "
                f"/meta/architecture as {spec.describe()}",
            )
        if "offset" in item:
            _check_packed_entry(path, item, specs.get(item["name"]), version)
        elif item["path"] != tensor_path(item["name"]):
            raise refused(path, f"tensor {item['name']!r:.60} is stored at an unexpected path")
    names = [item["name"] for item in value]
    if len(set(names)) != len(names) or set(names) != set(specs):
        raise damaged(path, "/meta/tensors and /meta/architecture list different tensors")
    return value


def _kind_fits(kind: str, spec: TensorSpec) -> bool:
    """Whether a value of ``kind`` can have the recorded dtype and shape."""
    if kind in _SCALAR_KINDS:
        return spec.dtype == _SCALAR_KINDS[kind] and spec.shape == ()
    if kind == "bits":
        return spec.dtype not in NUMERIC_DTYPES and spec.dtype != "str"
    return spec.dtype in NUMERIC_DTYPES and (kind == "array" or spec.shape == ())


def _bits_carrier_fits(spec: TensorSpec, carrier: np.dtype[Any]) -> bool:
    """An unsigned integer dtype of the recorded bits dtype's width, where it is known."""
    width = BITS_WIDTHS.get(spec.dtype)
    return carrier.kind == "u" and (width is None or carrier.itemsize * 8 == width)


def _check_packed_entry(
    path: Path, item: dict[str, Any], spec: TensorSpec | None, version: int
) -> None:
    """A packed tensor's entry: an element offset into ``packed/<its stored dtype>``."""
    name, offset = item["name"], item["offset"]
    if version < 2 or not _is_integer(offset) or not 0 <= offset < 2**62:
        raise damaged(path, f"/meta/tensors has a malformed entry for {name!r:.60}")
    if spec is None:
        return  # reported below: the manifest and the architecture differ
    if item["kind"] == "str":
        allowed = set()
    elif item["kind"] == "bits":
        carriers = [np.dtype(f"uint{bits}") for bits in (8, 16, 32, 64)]
        allowed = {packed_path(c.name) for c in carriers if _bits_carrier_fits(spec, c)}
    else:
        allowed = {packed_path(spec.dtype)} if spec.dtype in NUMERIC_DTYPES else set()
    if item["path"] not in allowed:
        raise refused(path, f"tensor {name!r:.60} is stored at an unexpected path")


# -- tensor datasets -----------------------------------------------------------------


@dataclass(frozen=True)
class TensorStorage:
    """Where a checked tensor's bytes are.

    ``offset``: a contiguous, native-order dataset, read straight from the file
    without HDF5; otherwise ``dataset``, read through HDF5. ``stored``: the
    bytes of the file it occupies. ``identity``: the HDF5 object (tied tensors,
    two names of one dataset, share it, and their bytes count once).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    offset: int | None
    dataset: h5py.Dataset | None
    stored: int
    identity: Any


def _open_dataset(path: Path, f: h5py.File, where: str) -> Any:
    """The low-level id of the dataset at ``where``, which must be one of this file."""
    try:
        dsid = h5py.h5d.open(f.id, where[1:].encode())
    except (KeyError, OSError, ValueError, RuntimeError) as error:
        raise refused(path, f"{where!r:.80} is not a dataset of this file") from error
    if dsid.fileno != f.id.fileno:
        raise refused(path, f"{where!r:.80} is not a dataset of this file")
    return dsid


def checked_tensor_dataset(
    path: Path,
    f: h5py.File,
    record_path: str,
    kind: str,
    spec: TensorSpec,
    file_size: int,
    fd: int,
) -> TensorStorage:
    """Check the dataset of one tensor before anything of it is read.

    Raises ``ValueError`` or ``TypeError`` for a dataset that differs from its
    recorded shape or dtype (the caller names the tensor) and
    :class:`CheckpointFormatError` for storage the format does not allow.
    """
    where = f"/{record_path}"
    dsid = _open_dataset(path, f, where)
    layout, filters = _storage(path, dsid, where)
    shape, dtype = tuple(dsid.shape), np.dtype(dsid.dtype)
    if kind == "str":
        dataset = h5py.Dataset(dsid)
        if shape != () or h5py.check_string_dtype(dtype) is None:
            raise ValueError("not a string")
        if spec.dtype != "str":
            raise ValueError(f"stored as a string, recorded as {spec.dtype}")
        _check_string_length(path, dataset, where, fd)
        stored = _stored_bytes(path, dsid, where, layout, filters, 0, file_size)
        return TensorStorage(shape, dtype, None, dataset, stored, dsid)
    if dtype.fields is not None or dtype.subdtype is not None or dtype.name not in NUMERIC_DTYPES:
        raise TypeError(f"dtype {dtype} is not numeric")
    recorded = dtype.name if kind != "bits" else spec.dtype
    if (
        shape != spec.shape
        or recorded != spec.dtype
        or (kind == "bits" and not _bits_carrier_fits(spec, dtype))
    ):
        raise ValueError(
            f"stored as {list(shape)} {dtype.name}, recorded as {list(spec.shape)} {spec.dtype}"
        )
    declared = math.prod(shape) * dtype.itemsize
    stored = _stored_bytes(path, dsid, where, layout, filters, declared, file_size)
    if layout == h5py.h5d.CONTIGUOUS and dtype.isnative:
        return TensorStorage(shape, dtype, dsid.get_offset(), None, stored, dsid)
    return TensorStorage(shape, dtype, None, h5py.Dataset(dsid), stored, dsid)


@dataclass(frozen=True)
class PackedDataset:
    """A checked ``packed/<dtype>`` dataset: where element 0 is, and how many there are."""

    offset: int
    dtype: np.dtype[Any]
    length: int
    identity: Any


def checked_packed_dataset(
    path: Path, f: h5py.File, record_path: str, file_size: int
) -> PackedDataset:
    """Check a dataset of packed tensors: one-dimensional, contiguous, native, inside the file."""
    where = f"/{record_path}"
    dsid = _open_dataset(path, f, where)
    layout, filters = _storage(path, dsid, where)
    dtype = np.dtype(dsid.dtype)
    if (
        len(dsid.shape) != 1
        or packed_path(dtype.name) != record_path
        or not dtype.isnative
        or dtype.fields is not None
        or dtype.name not in NUMERIC_DTYPES
        or layout != h5py.h5d.CONTIGUOUS
        or filters
    ):
        raise refused(path, f"{where!r:.80} is not a contiguous one-dimensional array")
    length = int(dsid.shape[0])
    _stored_bytes(path, dsid, where, layout, filters, length * dtype.itemsize, file_size)
    return PackedDataset(dsid.get_offset() or 0, dtype, length, dsid)


def packed_tensor(packed: PackedDataset, offset: int, spec: TensorSpec) -> TensorStorage:
    """Where a packed tensor's bytes are: ``offset`` elements into ``packed``.

    Its dtype is the packed dataset's: the manifest names the dataset of its
    recorded dtype, and the dataset has the dtype its name says. Raises
    ``ValueError`` for a tensor that does not lie inside the packed dataset
    (the caller names the tensor).
    """
    count = math.prod(spec.shape)
    if offset + count > packed.length:
        raise ValueError(
            f"elements {offset} to {offset + count} lie outside the {packed.length} of its "
            "packed dataset"
        )
    start = packed.offset + offset * packed.dtype.itemsize
    nbytes = count * packed.dtype.itemsize
    return TensorStorage(spec.shape, packed.dtype, start, None, nbytes, packed.identity)


def _stored_bytes(
    path: Path,
    dsid: Any,
    where: str,
    layout: int,
    filters: set[int],
    declared: int,
    file_size: int,
) -> int:
    """Bytes of the file a dataset occupies, checked to lie inside the file."""
    if layout == h5py.h5d.CHUNKED:
        stored = dsid.get_storage_size()
        if declared > MAX_EXPANSION * stored + 2**20:
            raise refused(path, f"{where!r:.80} declares more data than it can hold")
        return int(stored)
    if layout == h5py.h5d.CONTIGUOUS and not filters:
        offset = dsid.get_offset()
        if declared and (offset is None or offset + declared > file_size):
            raise damaged(path, f"{where!r:.80} lies outside the file")
        return declared
    if layout == h5py.h5d.COMPACT and not filters and declared <= 2**16:
        return declared
    raise refused(path, f"{where!r:.80} has a storage layout the format does not allow")


def check_tensor_sizes(path: Path, stored: int, file_size: int) -> None:
    """The tensors to read occupy no more bytes than the file has."""
    if stored > file_size:
        raise damaged(path, f"its tensors declare {stored} bytes, more than the file's {file_size}")
