"""A corpus of damaged and hostile checkpoint files, kept as the code that makes them.

Each :class:`Case` rewrites a valid checkpoint file (``ckpt-000003.h5``, beside
valid steps 1 and 2, written by :func:`write_steps`) the way an attacker or a
clumsy user would, and states the exact expman exception and one-line message a
reader must give. ``stage`` says where it is caught: ``metadata`` (by
``read_metadata``, so also by listing and restore) or ``read`` (the metadata is
fine; reading the tensors is refused). ``packed`` says which layout the files
have: every tensor in its own dataset (``tensors/...:0``), or the small tensors
packed into one dataset per dtype (``packed/float32``, ``packed/int64``), as
expman writes them by default. ``{path}`` in a message is the damaged file.

A ``SECRET`` file beside the directory holds text no reader may ever return.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from expman import (
    Bits,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointManager,
)

SECRET = '{"token": "s3cr3t-token-never-read"}'
REMEDY = "restore another step, or move the file away"


def state(step: int) -> dict[str, Any]:
    """The state every corpus checkpoint holds (step 3 is the one damaged)."""
    return {
        "dnn/hiddenlayer_0/kernel": np.full((4, 10), step, np.float32),
        "dnn/logits/kernel": np.full((10, 3), step, np.float32),
        "global_step": step,
        "dnn/logits/bias16": Bits(np.full(3, step, np.uint16), "bfloat16"),
    }


def write_steps(directory: Path, *, packed: bool) -> Path:
    """Steps 1, 2 and 3 of :func:`state`, in one dataset per tensor unless ``packed``."""
    with CheckpointManager(directory, **({} if packed else {"pack_max_bytes": 0})) as manager:
        for step in (1, 2, 3):
            manager.save(step, state(step), force=True)
    return directory


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path, Path], None]  # (the checkpoint file, a scratch directory)
    error: type[CheckpointError]
    detail: str  # the part of the message between the parentheses
    stage: str = "metadata"
    packed: bool = False

    def message(self, path: Path) -> str:
        detail = self.detail.format(path=path)
        if self.error is CheckpointFormatError:
            return f"{path} breaks the checkpoint format ({detail}): {REMEDY}"
        if self.stage == "read":
            return f"{path} cannot be read at tensor {detail}: {REMEDY}"
        return f"{path} has damaged metadata ({detail}): {REMEDY}"


def secret_file(scratch: Path) -> Path:
    path = scratch / "token.txt"
    path.write_text(SECRET)
    return path


def secret_hdf5(scratch: Path) -> Path:
    path = scratch / "secret.h5"
    with h5py.File(path, "w") as f:
        f["x"] = SECRET
        f["meta/metrics"] = SECRET
        f["y"] = np.zeros((10, 3), np.float32)
    return path


def replace(f: h5py.File, name: str, make: Callable[[], Any]) -> None:
    del f[name]
    f[name] = make()


def rewrite(name: str, change: Callable[[h5py.File, Path], None]) -> Callable[[Path, Path], None]:
    def damage(path: Path, scratch: Path) -> None:
        with h5py.File(path, "r+") as f:
            change(f, scratch)

    damage.__name__ = name
    return damage


def set_json(name: str, value: Any) -> Callable[[h5py.File, Path], None]:
    def change(f: h5py.File, scratch: Path) -> None:
        replace(f, name, lambda: value if isinstance(value, str) else json.dumps(value))

    return change


def set_attribute(name: str, value: Any) -> Callable[[h5py.File, Path], None]:
    def change(f: h5py.File, scratch: Path) -> None:
        f.attrs[name] = value

    return change


# -- reading outside the file ------------------------------------------------------


def external_scalar(f: h5py.File, name: str, secret: Path, size: int) -> None:
    """A scalar dataset whose bytes are those of another local file (h5py's
    ``create_dataset`` drops ``external`` for a scalar: the low-level API keeps it)."""
    del f[name]
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_external(str(secret).encode(), 0, size)
    kind = h5py.h5t.C_S1.copy() if name.startswith("meta/") else h5py.h5t.STD_I64LE.copy()
    if name.startswith("meta/"):
        kind.set_size(size)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    h5py.h5d.create(f.id, name.encode(), kind, space, dcpl=plist)


def metrics_external_storage(f: h5py.File, scratch: Path) -> None:
    external_scalar(f, "meta/metrics", secret_file(scratch), len(SECRET))


def params_external_link(f: h5py.File, scratch: Path) -> None:
    replace(f, "meta/params", lambda: h5py.ExternalLink(str(secret_hdf5(scratch)), "x"))


def meta_group_external_link(f: h5py.File, scratch: Path) -> None:
    replace(f, "meta", lambda: h5py.ExternalLink(str(secret_hdf5(scratch)), "/"))


def architecture_soft_link(f: h5py.File, scratch: Path) -> None:
    replace(f, "meta/architecture", lambda: h5py.SoftLink("/meta/params"))


def tensor_group_soft_link(f: h5py.File, scratch: Path) -> None:
    f.move("tensors/dnn", "tensors/real")
    f["tensors/dnn"] = h5py.SoftLink("/tensors/real")


def tensor_external_storage(f: h5py.File, scratch: Path) -> None:
    external_scalar(f, "tensors/global_step:0", secret_file(scratch), 8)


def tensor_virtual_dataset(f: h5py.File, scratch: Path) -> None:
    source = h5py.VirtualSource(str(secret_hdf5(scratch)), "y", shape=(10, 3), dtype=np.float32)
    layout = h5py.VirtualLayout(shape=(10, 3), dtype=np.float32)
    layout[:] = source
    del f["tensors/dnn/logits/kernel:0"]
    f.create_virtual_dataset("tensors/dnn/logits/kernel:0", layout)


def extra_dataset(f: h5py.File, scratch: Path) -> None:
    f["tensors/evil"] = np.zeros(3)


def hard_link_cycle(f: h5py.File, scratch: Path) -> None:
    f["tensors/dnn/loop"] = f["tensors"]


# -- sizes ------------------------------------------------------------------------


def huge_gzip_metadata(f: h5py.File, scratch: Path) -> None:
    del f["meta/params"]
    f.create_dataset("meta/params", shape=(2**33,), dtype="S1", compression="gzip", chunks=True)


def huge_string_length(f: h5py.File, scratch: Path) -> None:
    offset = f["meta/params"].id.get_offset()
    f.close()
    with open(scratch / "target", encoding="utf-8") as target, open(target.read(), "r+b") as raw:
        raw.seek(offset)
        raw.write(b"\xff\xff\xff\xff")


def huge_tensor(f: h5py.File, scratch: Path) -> None:
    """The manifest, the architecture and the dataset all declare a 4 TiB tensor."""
    shape = [2**20, 2**20]
    arch = json.loads(f["meta/architecture"][()])
    for spec in arch["tensors"]:
        if spec["name"] == "dnn/logits/kernel":
            spec["shape"] = shape
    replace(f, "meta/architecture", lambda: json.dumps(arch))
    del f["tensors/dnn/logits/kernel:0"]
    f.create_dataset("tensors/dnn/logits/kernel:0", shape=tuple(shape), dtype=np.float32)


def object_reference_tensor(f: h5py.File, scratch: Path) -> None:
    del f["tensors/global_step:0"]
    f.create_dataset("tensors/global_step:0", shape=(), dtype=h5py.ref_dtype)


def external_packed(f: h5py.File, name: str, secret: Path, count: int) -> None:
    """A packed int64 dataset of ``count`` elements whose bytes are another local file's."""
    del f[name]
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_external(str(secret).encode(), 0, 8 * count)
    space = h5py.h5s.create_simple((count,))
    h5py.h5d.create(f.id, name.encode(), h5py.h5t.STD_I64LE.copy(), space, dcpl=plist)


def packed_external_storage(f: h5py.File, scratch: Path) -> None:
    external_packed(f, "packed/int64", secret_file(scratch), 1)


def packed_chunked(f: h5py.File, scratch: Path) -> None:
    values = f["packed/float32"][()]
    del f["packed/float32"]
    f.create_dataset("packed/float32", data=values, chunks=(10,), compression="gzip")


def packed_wrong_dtype(f: h5py.File, scratch: Path) -> None:
    values = f["packed/float32"][()]
    del f["packed/float32"]
    f["packed/float32"] = values.astype(np.float64)


def packed_short(f: h5py.File, scratch: Path) -> None:
    values = f["packed/float32"][()]
    del f["packed/float32"]
    f["packed/float32"] = values[:50]


def packed_entry(name: str, **changes: Any) -> Callable[[h5py.File, Path], None]:
    def change(f: h5py.File, scratch: Path) -> None:
        manifest = json.loads(f["meta/tensors"][()])
        for entry in manifest:
            if entry["name"] == name:
                entry.update(changes)
        replace(f, "meta/tensors", lambda: json.dumps(manifest))

    return change


def overlapping_tensor(f: h5py.File, scratch: Path) -> None:
    """A tensor of the architecture whose packed range starts inside another's."""
    manifest = json.loads(f["meta/tensors"][()])
    arch = json.loads(f["meta/architecture"][()])
    manifest.append(dict(manifest[0], name="dnn/shifted", offset=1))
    arch["tensors"].append({"name": "dnn/shifted", "shape": [4, 10], "dtype": "float32"})
    arch["tensors"].sort(key=lambda t: t["name"])
    replace(f, "meta/tensors", lambda: json.dumps(manifest))
    replace(f, "meta/architecture", lambda: json.dumps(arch))


def deep_params(f: h5py.File, scratch: Path) -> None:
    replace(f, "meta/params", lambda: '{"k":' * 101 + "1" + "}" * 101)


def packed_in_version_1(f: h5py.File, scratch: Path) -> None:
    f.attrs["format_version"] = 1


def with_target(change: Callable[[h5py.File, Path], None]) -> Callable[[Path, Path], None]:
    """For a change that must rewrite raw bytes: it finds the file's path in scratch/target."""

    def damage(path: Path, scratch: Path) -> None:
        (scratch / "target").write_text(str(path), encoding="utf-8")
        f = h5py.File(path, "r+")
        try:
            change(f, scratch)
        finally:
            if f.id.valid:
                f.close()

    return damage


def manifest_without(name: str) -> Callable[[h5py.File, Path], None]:
    def change(f: h5py.File, scratch: Path) -> None:
        manifest = [t for t in json.loads(f["meta/tensors"][()]) if t["name"] != name]
        replace(f, "meta/tensors", lambda: json.dumps(manifest))

    return change


# -- the corpus --------------------------------------------------------------------

F, C = CheckpointFormatError, CheckpointCorruptError

CASES = [
    Case(
        "metrics with external storage (a local token file)",
        rewrite("metrics_external_storage", metrics_external_storage),
        F,
        "'/meta/metrics' has external storage",
    ),
    Case(
        "params as an external link",
        rewrite("params_external_link", params_external_link),
        F,
        "'/meta/params' is an external link; only hard links are allowed",
    ),
    Case(
        "the meta group as an external link",
        rewrite("meta_group_external_link", meta_group_external_link),
        F,
        "'/meta' is an external link; only hard links are allowed",
    ),
    Case(
        "architecture as a soft link",
        rewrite("architecture_soft_link", architecture_soft_link),
        F,
        "'/meta/architecture' is a soft link; only hard links are allowed",
    ),
    Case(
        "a soft link on a tensor's path",
        rewrite("tensor_group_soft_link", tensor_group_soft_link),
        F,
        "'/tensors/dnn' is a soft link; only hard links are allowed",
    ),
    Case(
        "a tensor with external storage",
        rewrite("tensor_external_storage", tensor_external_storage),
        F,
        "'/tensors/global_step:0' has external storage",
        stage="read",
    ),
    Case(
        "a virtual tensor dataset",
        rewrite("tensor_virtual_dataset", tensor_virtual_dataset),
        F,
        "'/tensors/dnn/logits/kernel:0' is a virtual dataset",
        stage="read",
    ),
    Case(
        "an object the format does not name",
        rewrite("extra_dataset", extra_dataset),
        F,
        "unexpected object '/tensors/evil'",
    ),
    Case(
        "a hard link cycle",
        rewrite("hard_link_cycle", hard_link_cycle),
        F,
        "unexpected object '/tensors/dnn/loop'",
    ),
    Case(
        "a 2^33-byte gzip metadata dataset",
        rewrite("huge_gzip_metadata", huge_gzip_metadata),
        F,
        "'/meta/params' is not a scalar UTF-8 string",
    ),
    Case(
        "a metadata string declaring 4 GiB",
        with_target(huge_string_length),
        F,
        "'/meta/params' declares 4294967295 bytes, more than the 67108864 allowed",
    ),
    Case(
        "format_version 'abc'",
        rewrite("version_text", set_attribute("format_version", "abc")),
        F,
        "format_version 'abc' is not a positive integer",
    ),
    Case(
        "format_version NaN",
        rewrite("version_nan", set_attribute("format_version", float("nan"))),
        F,
        "format_version nan is not a positive integer",
    ),
    Case(
        "format_version inf",
        rewrite("version_inf", set_attribute("format_version", float("inf"))),
        F,
        "format_version inf is not a positive integer",
    ),
    Case(
        "format_version 0",
        rewrite("version_zero", set_attribute("format_version", 0)),
        F,
        "format_version 0 is not a positive integer",
    ),
    Case(
        "format_version -1",
        rewrite("version_negative", set_attribute("format_version", -1)),
        F,
        "format_version -1 is not a positive integer",
    ),
    Case(
        "a step that is not the file name's",
        rewrite("step_999", set_attribute("step", np.int64(999))),
        F,
        "step 999 differs from the file name's step 3",
    ),
    Case(
        "a negative step",
        rewrite("step_negative", set_attribute("step", np.int64(-1))),
        F,
        "step -1 is not a non-negative integer",
    ),
    Case(
        "a manifest that lacks a tensor",
        rewrite("manifest_short", manifest_without("global_step")),
        C,
        "/meta/tensors and /meta/architecture list different tensors",
    ),
    Case(
        "a manifest that is not a list",
        rewrite("manifest_object", set_json("meta/tensors", {})),
        C,
        "/meta/tensors is not a list",
    ),
    Case(
        "a metric named with a carriage return (found by the fuzzer: it broke `expman show`)",
        rewrite("metric_carriage_return", set_json("meta/metrics", {"\r": 0.0})),
        C,
        "metric '\\r' has a control character in its name",
    ),
    Case(
        "metrics that are not an object",
        rewrite("metrics_list", set_json("meta/metrics", [1, 2])),
        C,
        "/meta/metrics is not a JSON object",
    ),
    Case(
        "an infinite dimension",
        rewrite(
            "shape_infinity",
            set_json(
                "meta/architecture",
                '{"config": {}, "tensors": [{"dtype": "float32", "name": "x", '
                '"shape": [Infinity]}]}',
            ),
        ),
        C,
        "/meta/architecture has a malformed entry for 'x'",
    ),
    Case(
        "JSON nested 100,000 deep",
        rewrite("deep_json", set_json("meta/params", "[" * 100_000)),
        C,
        "maximum recursion depth exceeded while decoding a JSON array from a unicode string",
    ),
    Case(
        "a 4 TiB tensor declared in a small file",
        rewrite("huge_tensor", huge_tensor),
        C,
        "'/tensors/dnn/logits/kernel:0' lies outside the file",
        stage="load",
    ),
    Case(
        "an object-reference tensor",
        rewrite("object_reference_tensor", object_reference_tensor),
        C,
        "'global_step' (dtype object is not numeric)",
        stage="read",
    ),
    Case(
        "a packed dataset with external storage (a local token file)",
        rewrite("packed_external_storage", packed_external_storage),
        F,
        "'/packed/int64' has external storage",
        stage="read",
        packed=True,
    ),
    Case(
        "a packed dataset stored in compressed chunks",
        rewrite("packed_chunked", packed_chunked),
        F,
        "'/packed/float32' is not a contiguous one-dimensional array",
        stage="read",
        packed=True,
    ),
    Case(
        "a packed dataset of another dtype than its name",
        rewrite("packed_wrong_dtype", packed_wrong_dtype),
        F,
        "'/packed/float32' is not a contiguous one-dimensional array",
        stage="read",
        packed=True,
    ),
    Case(
        "a packed tensor past the end of its dataset",
        rewrite("packed_short", packed_short),
        C,
        "'dnn/logits/kernel' (elements 40 to 70 lie outside the 50 of its packed dataset)",
        stage="read",
        packed=True,
    ),
    Case(
        "a packed tensor at an offset past its dataset",
        rewrite("packed_far", packed_entry("global_step", offset=2**61)),
        C,
        "'global_step' (elements 2305843009213693952 to 2305843009213693953 lie outside the "
        "1 of its packed dataset)",
        stage="read",
        packed=True,
    ),
    Case(
        "a packed tensor with a negative offset",
        rewrite("packed_negative", packed_entry("global_step", offset=-1)),
        C,
        "/meta/tensors has a malformed entry for 'global_step'",
        packed=True,
    ),
    Case(
        "a packed tensor with an offset that is not an integer",
        rewrite("packed_text_offset", packed_entry("global_step", offset="0")),
        C,
        "/meta/tensors has a malformed entry for 'global_step'",
        packed=True,
    ),
    Case(
        "a packed tensor in the dataset of another dtype",
        rewrite("packed_other_dtype", packed_entry("global_step", path="packed/float32")),
        F,
        "tensor 'global_step' is stored at an unexpected path",
        packed=True,
    ),
    Case(
        "a packed tensor outside /packed",
        rewrite("packed_elsewhere", packed_entry("global_step", path="meta/params")),
        F,
        "tensor 'global_step' is stored at an unexpected path",
        packed=True,
    ),
    Case(
        "a float32 array recorded as a string, at a packed offset",
        rewrite("packed_as_str", packed_entry("dnn/logits/kernel", kind="str")),
        C,
        "/meta/tensors records 'dnn/logits/kernel' as str, /meta/architecture as [10, 3] float32",
        packed=True,
    ),
    Case(
        "a float32 array recorded as bits",
        rewrite("packed_as_bits", packed_entry("dnn/logits/kernel", kind="bits")),
        C,
        "/meta/tensors records 'dnn/logits/kernel' as bits, /meta/architecture as [10, 3] float32",
        packed=True,
    ),
    Case(
        "an int64 step recorded as a bool",
        rewrite("int_as_bool", packed_entry("global_step", kind="bool")),
        C,
        "/meta/tensors records 'global_step' as bool, /meta/architecture as [] int64",
        packed=True,
    ),
    Case(
        "bfloat16 bits packed among 8-bit integers (half its bytes)",
        rewrite("bits_in_uint8", packed_entry("dnn/logits/bias16", path="packed/uint8")),
        F,
        "tensor 'dnn/logits/bias16' is stored at an unexpected path",
        packed=True,
    ),
    Case(
        "bfloat16 bits in their own dataset of 8-bit integers",
        rewrite(
            "bits_dataset_uint8",
            lambda f, scratch: replace(
                f, "tensors/dnn/logits/bias16:0", lambda: np.zeros(3, np.uint8)
            ),
        ),
        C,
        "'dnn/logits/bias16' (stored as [3] uint8, recorded as [3] bfloat16)",
        stage="read",
    ),
    Case(
        "a tensor whose packed range starts inside another's",
        rewrite("overlapping_tensor", overlapping_tensor),
        C,
        "tensors 'dnn/hiddenlayer_0/kernel' and 'dnn/shifted' overlap in the file",
        stage="load",
        packed=True,
    ),
    Case(
        "params nested 101 levels deep",
        rewrite("deep_params", deep_params),
        C,
        "/meta/params nests deeper than 100 levels",
    ),
    Case(
        "packed tensors in a file of format version 1",
        rewrite("packed_in_version_1", packed_in_version_1),
        C,
        "/meta/tensors has a malformed entry for 'dnn/hiddenlayer_0/kernel'",
        packed=True,
    ),
]
