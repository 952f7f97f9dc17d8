"""Written files match docs/checkpoint-format.md; damaged and foreign files are refused."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from expman import (
    CheckpointCorruptError,
    CheckpointFormatError,
    CheckpointIndexWarning,
    CheckpointManager,
    read_metadata,
)
from expman.checkpoints._format import PACK_MAX_BYTES
from expman.checkpoints._state import Bits
from tests.conftest import require_tool

DOC = (Path(__file__).parents[1] / "docs" / "checkpoint-format.md").read_text()
DOC_STATE: dict[str, Any] = {
    "dnn/hiddenlayer_0/kernel": np.zeros((4, 10), np.float32),
    "dnn/hiddenlayer_0/bias": np.zeros(10, np.float32),
    "dnn/hiddenlayer_0/bias/t_0/Adagrad": np.zeros(10, np.float32),
    "dnn/logits/kernel": np.zeros((10, 3), np.float32),
    "global_step": 200,
}
TYPES = {"string": str, "int64": np.int64, "float64": np.float64}


def doc_table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` in the format doc."""
    section = DOC.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append([c.strip("`") for c in cells])
        elif rows and not line.startswith("|"):
            break
    return rows


def doc_block(after: str) -> str:
    return DOC.split(after, 1)[1].split("```", 2)[1].strip("\n")


def write_doc_example(directory: Path, **options: Any) -> Path:
    manager = CheckpointManager(
        directory, experiment="base", code_commit="a" * 40, params={"lr": 0.1}, **options
    )
    manager.save(200, DOC_STATE, metrics={"loss": 0.081, "bad": float("nan")}, force=True)
    return directory / "ckpt-000200.h5"


@pytest.mark.parametrize(
    ("options", "listed_after"),
    [
        ({}, "`h5ls -r ckpt-000200.h5` shows (every tensor is small, so all are packed):"),
        ({"pack_max_bytes": 0}, "its own dataset, `h5ls -r ckpt-000200.h5` shows:"),
    ],
    ids=["packed", "datasets"],
)
def test_h5ls_shows_the_documented_layout(
    ckpt_dir: Path, options: dict[str, Any], listed_after: str
) -> None:
    path = write_doc_example(ckpt_dir, **options)
    h5ls = require_tool("h5ls", install="apt-get install hdf5-tools")
    listing = subprocess.run([h5ls, "-r", str(path)], capture_output=True, text=True, check=True)
    assert listing.stdout.strip("\n") == doc_block(listed_after)


def test_h5dump_shows_the_root_attributes(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    h5dump = require_tool("h5dump", install="apt-get install hdf5-tools")
    dump = subprocess.run([h5dump, "-A", str(path)], capture_output=True, text=True, check=True)
    assert re.search(r'ATTRIBUTE "format" \{.*?"expman-checkpoint"', dump.stdout, re.S)
    assert re.search(r'ATTRIBUTE "step" \{.*?\(0\): 200', dump.stdout, re.S)


def test_root_attributes_are_exactly_the_documented_ones(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    documented = {name: TYPES[kind] for name, kind, _ in doc_table("### Root attributes")}
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    assert set(attrs) == set(documented)
    for name, value in attrs.items():
        assert isinstance(value, documented[name]), name
    assert attrs["format"] == "expman-checkpoint"
    assert attrs["format_version"] == 2
    assert attrs["step"] == 200
    assert attrs["tensor_count"] == len(DOC_STATE)
    assert attrs["experiment"] == "base"
    assert attrs["code_commit"] == "a" * 40
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", attrs["created"])


def test_metadata_datasets_hold_the_documented_json(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    documented = {row[0] for row in doc_table("### Metadata datasets")}
    with h5py.File(path, "r") as f:
        found = {f"/meta/{name}" for name in f["meta"]}
        content = {name: json.loads(f[name].asstr()[()]) for name in found}
        digest = f.attrs["architecture_digest"]
    assert found == documented
    assert content["/meta/params"] == {"lr": 0.1}
    assert content["/meta/metrics"]["loss"] == 0.081
    assert np.isnan(content["/meta/metrics"]["bad"])
    tensors = content["/meta/architecture"]["tensors"]
    assert [t["name"] for t in tensors] == sorted(DOC_STATE)
    assert tensors[0] == {"name": "dnn/hiddenlayer_0/bias", "shape": [10], "dtype": "float32"}
    assert {t["name"]: t["dtype"] for t in tensors}["global_step"] == "int64"
    manifest = content["/meta/tensors"]
    assert [t["name"] for t in manifest] == list(DOC_STATE)
    assert manifest[-1] == {
        "name": "global_step",
        "path": "packed/int64",
        "offset": 0,
        "kind": "int",
        "checksum": manifest[-1]["checksum"],
    }
    canonical = json.dumps(tensors, separators=(",", ":"), sort_keys=True).encode()
    assert digest == "sha256:" + hashlib.sha256(canonical).hexdigest()


def test_small_tensors_lie_end_to_end_in_one_dataset_per_dtype(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    with h5py.File(path, "r") as f:
        manifest = json.loads(f["meta/tensors"].asstr()[()])
        packed = f["packed/float32"]
        assert set(packed.attrs) == set() and packed.chunks is None
        assert packed.compression is None and packed.id.get_offset() is not None
        values = packed[()]
    entries = {t["name"]: t for t in manifest}
    assert json.dumps(entries["dnn/logits/kernel"], sort_keys=True) == doc_block(
        "The entry of `dnn/logits/kernel` above is"
    )
    start = 0
    for name, value in DOC_STATE.items():
        if name == "global_step":
            continue
        assert entries[name]["path"] == "packed/float32"
        assert entries[name]["offset"] == start  # in the state's order, end to end
        np.testing.assert_array_equal(values[start : start + value.size], value.reshape(-1))
        start += value.size
    assert start == len(values)


def test_pack_max_bytes_is_the_largest_packed_array(ckpt_dir: Path) -> None:
    state = {
        "at_limit": np.ones(PACK_MAX_BYTES // 4, np.float32),  # 1 MiB: packed
        "over_limit": np.ones(PACK_MAX_BYTES // 4 + 1, np.float32),  # one more: its own dataset
        "text": "strings are never packed",
    }
    CheckpointManager(ckpt_dir).save(1, state, force=True)
    paths = {t.name: t.path for t in read_metadata(ckpt_dir / "ckpt-000001.h5").tensors}
    assert paths == {
        "at_limit": "packed/float32",
        "over_limit": "tensors/over_limit:0",
        "text": "tensors/text:0",
    }
    restored = CheckpointManager(ckpt_dir).load()
    np.testing.assert_array_equal(restored["at_limit"], state["at_limit"])
    np.testing.assert_array_equal(restored["over_limit"], state["over_limit"])


def test_a_file_of_format_version_1_is_read_as_before(ckpt_dir: Path) -> None:
    """Written by expman at b1cf1bd, before packing: every tensor in its own dataset."""
    ckpt_dir.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "format-v1-ckpt-000200.h5", ckpt_dir)
    (ckpt_dir / "format-v1-ckpt-000200.h5").rename(ckpt_dir / "ckpt-000200.h5")
    meta = read_metadata(ckpt_dir / "ckpt-000200.h5")
    assert meta.format_version == 1
    assert {t.path for t in meta.tensors} >= {"tensors/big:0", "tensors/dnn/logits/tied:0"}
    with pytest.warns(CheckpointIndexWarning):
        loaded = CheckpointManager(ckpt_dir).load()
    assert sorted(loaded) == sorted(V1_STATE)
    for name, value in V1_STATE.items():
        if isinstance(value, Bits):
            assert loaded[name].dtype == value.dtype
            np.testing.assert_array_equal(loaded[name].array, value.array)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded[name], value)
            assert loaded[name].dtype == value.dtype
        else:
            assert loaded[name] == value and type(loaded[name]) is type(value)


# The state of tests/data/format-v1-ckpt-000200.h5 (see tests/data/README.md).
V1_STATE: dict[str, Any] = {
    "dnn/hiddenlayer_0/kernel": np.arange(40, dtype=np.float32).reshape(4, 10),
    "dnn/hiddenlayer_0/bias": np.linspace(0, 1, 10).astype(np.float32),
    "dnn/logits/kernel": np.arange(30, dtype=np.float64).reshape(10, 3),
    "dnn/logits/tied": np.arange(30, dtype=np.float64).reshape(10, 3),
    "big": np.arange(2000, dtype=np.float32),
    "half": Bits(np.arange(6, dtype=np.uint16), "bfloat16"),
    "count": np.int32(7),
    "flag": True,
    "lr": 0.5,
    "note": "v1 file",
    "global_step": 200,
}


def test_tensor_datasets_are_contiguous_and_carry_no_attributes(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir, pack_max_bytes=0)
    with h5py.File(path, "r") as f:
        kernel = f["tensors/dnn/hiddenlayer_0/kernel:0"]
        # Name, kind and checksum are in the manifest only: one place to read and verify.
        assert set(kernel.attrs) == set()
        assert kernel.dtype == np.float32 and kernel.shape == (4, 10)
        assert kernel.chunks is None and kernel.compression is None
        assert kernel.id.get_offset() is not None  # contiguous: readable straight from the file
        assert f["tensors/dnn/hiddenlayer_0/bias/t_0/Adagrad:0"].shape == (10,)


def test_compression_is_opt_in(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir, compression="gzip", pack_max_bytes=0)
    with h5py.File(path, "r") as f:
        kernel = f["tensors/dnn/hiddenlayer_0/kernel:0"]
        assert kernel.compression == "gzip" and kernel.chunks is not None
    loaded = CheckpointManager(ckpt_dir).load()
    assert loaded["global_step"] == 200
    with pytest.raises(ValueError, match="compression must be one of"):
        CheckpointManager(ckpt_dir / "x", compression="zip").save(1, DOC_STATE, force=True)


def test_index_file_is_the_documented_text(ckpt_dir: Path) -> None:
    write_doc_example(ckpt_dir)
    text = (ckpt_dir / "checkpoint").read_text()
    assert text == (
        "# expman checkpoint index: the latest checkpoint and every kept one.\n"
        "# Rewritten after each save; expman rebuilds it from the files if it is lost.\n"
        'model_checkpoint_path: "ckpt-000200.h5"\n'
        'all_model_checkpoint_paths: "ckpt-000200.h5"\n'
    )


def test_metadata_over_64_kib_is_stored(ckpt_dir: Path) -> None:
    params = {f"param_{i}": "x" * 100 for i in range(2000)}  # ~220 KB of JSON
    manager = CheckpointManager(ckpt_dir, params=params, model_config=params)
    manager.save(1, {"w": np.zeros(1)}, force=True)
    meta = read_metadata(ckpt_dir / "ckpt-000001.h5")
    assert meta.params == params
    assert meta.architecture.config == params


def test_read_metadata_reads_no_tensor(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    with h5py.File(path, "r+") as f:  # poison every tensor: metadata must still read
        for name in ("packed/float32", "packed/int64"):
            del f[name]
    meta = read_metadata(path)
    assert meta.step == 200
    assert meta.experiment == "base"
    assert meta.architecture.tensors[0].name == "dnn/hiddenlayer_0/bias"
    assert meta.versions["expman"] and meta.versions["hdf5"]


# -- damaged and foreign files ------------------------------------------------


def restore_error(directory: Path) -> str:
    state = {k: np.ones_like(v) if isinstance(v, np.ndarray) else v for k, v in DOC_STATE.items()}
    with (
        pytest.raises((CheckpointCorruptError, CheckpointFormatError)) as caught,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", CheckpointIndexWarning)  # a hand-made directory
        CheckpointManager(directory).restore(state)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_truncated_file(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = restore_error(ckpt_dir)
    assert message.startswith(f"{path} is truncated or damaged (")
    assert message.endswith("): restore another step, or move the file away")


def test_not_an_hdf5_file(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    path.write_bytes(b"PK\x03\x04 this is a zip, not a checkpoint")
    assert restore_error(ckpt_dir) == (
        f"{path} is not an HDF5 file (damaged, or not a checkpoint): "
        "restore another step, or move the file away"
    )


def test_hdf5_file_not_written_by_expman(ckpt_dir: Path) -> None:
    ckpt_dir.mkdir()
    path = ckpt_dir / "ckpt-000005.h5"
    with h5py.File(path, "w") as f:
        f["weights"] = np.zeros(3)
    assert restore_error(ckpt_dir) == (
        f"{path} is an HDF5 file that expman did not write (no format attribute "
        "'expman-checkpoint'): give the path of an expman checkpoint"
    )


def test_future_format_version(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 3
    assert restore_error(ckpt_dir) == (
        f"{path} has checkpoint format version 3, newer than this expman reads (2): "
        "upgrade expman to read it"
    )


def test_checksum_mismatch(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    with h5py.File(path, "r") as f:
        offset = f["packed/float32"].id.get_offset() + 60 * 4  # dnn/logits/kernel, packed
    with open(path, "r+b") as handle:
        handle.seek(offset + 8)
        handle.write(b"\x01")
    message = restore_error(ckpt_dir)
    assert re.fullmatch(
        re.escape(f"{path} is corrupt: tensor 'dnn/logits/kernel' fails its checksum ")
        + r"\(recorded xxh3-64:[0-9a-f]{16}, found xxh3-64:[0-9a-f]{16}\): "
        + re.escape("restore another step, or move the file away"),
        message,
    )


@pytest.mark.parametrize("position", ["first byte", "last byte"])
def test_a_large_tensor_fails_its_checksum_wherever_it_is_damaged(
    ckpt_dir: Path, position: str
) -> None:
    """Tensors over 1 MiB are hashed on a second thread while they are read."""
    large = {"big": np.arange(3 * 2**20 // 4, dtype=np.float32), "small": np.ones(3, np.float32)}
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(1, large, force=True)
    path = ckpt_dir / "ckpt-000001.h5"
    with h5py.File(path, "r") as f:
        offset = f["tensors/big:0"].id.get_offset()
    with open(path, "r+b") as handle:
        handle.seek(offset + (0 if position == "first byte" else large["big"].nbytes - 1))
        handle.write(b"\xff")
    into = {name: np.zeros_like(value) for name, value in large.items()}
    with pytest.raises(CheckpointCorruptError, match=r"tensor 'big' fails its checksum"):
        CheckpointManager(ckpt_dir).restore(into)


def test_metadata_that_lies_about_a_shape_is_refused(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir, pack_max_bytes=0)
    with h5py.File(path, "r+") as f:
        del f["tensors/dnn/logits/kernel:0"]
        f["tensors/dnn/logits/kernel:0"] = np.zeros((10, 4), np.float32)
    message = restore_error(ckpt_dir)
    assert message == (
        f"{path} cannot be read at tensor 'dnn/logits/kernel' (stored as [10, 4] float32, "
        "recorded as [10, 3] float32): restore another step, or move the file away"
    )


def test_external_link_is_refused(ckpt_dir: Path, tmp_path: Path) -> None:
    path = write_doc_example(ckpt_dir, pack_max_bytes=0)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros((10, 3), np.float32)
    with h5py.File(path, "r+") as f:
        del f["tensors/dnn/logits/kernel:0"]
        f["tensors/dnn/logits/kernel:0"] = h5py.ExternalLink(str(other), "x")
    assert restore_error(ckpt_dir) == (
        f"{path} breaks the checkpoint format ('/tensors/dnn/logits/kernel:0' is an external "
        "link; only hard links are allowed): restore another step, or move the file away"
    )


def test_object_dtype_dataset_is_never_unpickled(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir, pack_max_bytes=0)
    with h5py.File(path, "r+") as f:
        del f["tensors/global_step:0"]
        f.create_dataset("tensors/global_step:0", data=np.void(b"\x80\x04pickle"))
    assert "restore another step" in restore_error(ckpt_dir)


def test_damaged_metadata_json(ckpt_dir: Path) -> None:
    path = write_doc_example(ckpt_dir)
    with h5py.File(path, "r+") as f:
        del f["meta/architecture"]
        f["meta/architecture"] = "{not json"
    message = restore_error(ckpt_dir)
    assert message.startswith(f"{path} has damaged metadata (")


def test_copied_checkpoint_is_still_valid(ckpt_dir: Path, tmp_path: Path) -> None:
    path = write_doc_example(ckpt_dir)
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copy(path, elsewhere / path.name)
    with pytest.warns(CheckpointIndexWarning, match=r"copy/checkpoint is missing or damaged"):
        assert CheckpointManager(elsewhere).load()["global_step"] == 200
