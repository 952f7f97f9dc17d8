"""A fuzzer: real checkpoint files, mutated at random, through every read path.

Mutations: bit flips, truncation, bytes overwritten, and rewrites with h5py
(attributes, metadata datasets, links, external storage, deleted objects).
Each case's files are strangers' files (copies), so HDF5 meets them first in
the sandbox's helper process; each case goes through ``read_metadata``,
``checkpoints()``, ``restore_latest``, ``load`` and ``expman show`` (its
``main()``, in this process). Whatever the file, a reader
raises only expman exceptions, with a one-line message, never hangs (an alarm
fails the case after 20 s; a watchdog ends the process after 60 s), never
crashes (``make fuzz`` runs it in child processes, in shards, and checks their
exit status),
and never returns a byte of the secret file that the mutations point links and
external storage at.

``make test`` runs a short run (EXPMAN_FUZZ_EXAMPLES, 70 by default: as long as
150 cases took before each case also ran ``expman show`` and the helper);
``make fuzz`` a long one (docs/development.md, "Fuzzing"): one pytest process
per shard, each keeping the count of cases it ran in EXPMAN_FUZZ_PROGRESS.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from expman import ArchitectureMismatchError, CheckpointManager, ExpmanError, read_metadata
from tests.cli import expman_in_process
from tests.conftest import make_repository
from tests.hostile_checkpoints import SECRET, state

EXAMPLES = int(os.environ.get("EXPMAN_FUZZ_EXAMPLES", "70"))
# make fuzz: where the number of cases run so far, and the case running, are kept.
PROGRESS = os.environ.get("EXPMAN_FUZZ_PROGRESS")
_cases = [0]
ATTRIBUTES = ["format", "format_version", "step", "wall_time", "experiment", "tensor_count"]
META_DATASETS = ["meta/architecture", "meta/metrics", "meta/params", "meta/tensors"]
# The files pack arrays of up to PACK_MAX_BYTES, so both layouts are there: the
# 160-byte kernel in its own dataset, the 120-byte one and global_step packed.
PACK_MAX_BYTES = 128
TENSOR_DATASETS = ["tensors/dnn/hiddenlayer_0/kernel:0", "packed/float32", "packed/int64"]
OBJECTS = ["meta", *META_DATASETS, "tensors", "tensors/dnn", "packed", *TENSOR_DATASETS]

values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(-5, 5), max_size=4).map(lambda v: np.array(v, np.int64)),
)
json_texts = st.one_of(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    ).map(json.dumps),
    st.text(max_size=40),
)

byte_edits = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 2**31)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**31), st.binary(min_size=1, max_size=16)),
)
h5_edits = st.one_of(
    st.tuples(st.just("attribute"), st.sampled_from(ATTRIBUTES), values),
    st.tuples(st.just("json"), st.sampled_from(META_DATASETS), json_texts),
    st.tuples(st.just("array"), st.sampled_from(META_DATASETS + TENSOR_DATASETS), values),
    st.tuples(st.just("soft"), st.sampled_from(OBJECTS), st.sampled_from(OBJECTS)),
    st.tuples(st.just("external"), st.sampled_from(OBJECTS)),
    st.tuples(st.just("external_storage"), st.sampled_from(META_DATASETS + TENSOR_DATASETS)),
    st.tuples(st.just("delete"), st.sampled_from(OBJECTS)),
)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz") / "model_dir"
    with CheckpointManager(directory, params={"lr": 0.1}, pack_max_bytes=PACK_MAX_BYTES) as manager:
        for step in (1, 2):
            manager.save(step, state(step), metrics={"loss": 1 / step}, force=True)
    return directory


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the experiment ``base``; each case's files are its checkpoints."""
    repo = make_repository(tmp_path_factory.mktemp("fuzz-repo") / "repo")
    created = expman_in_process(repo, "new", "base")
    assert created.returncode == 0, created.stderr
    return repo


@pytest.fixture
def alarm() -> Iterator[None]:
    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError("a read path hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    yield
    signal.signal(signal.SIGALRM, previous)


def apply_bytes(path: Path, edit: tuple[Any, ...]) -> None:
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "r+b") as handle:
        if edit[0] == "truncate":
            handle.truncate(edit[1] % size)
        elif edit[0] == "flip":
            handle.seek(edit[1] % size)
            byte = handle.read(1)[0]
            handle.seek(edit[1] % size)
            handle.write(bytes([byte ^ (1 << edit[2])]))
        else:
            handle.seek(edit[1] % size)
            handle.write(edit[2])


def apply_h5(path: Path, edit: tuple[Any, ...], secret: Path, secret_h5: Path) -> None:
    with h5py.File(path, "r+") as f:
        kind, name = edit[0], edit[1]
        if kind == "attribute":
            f.attrs[name] = edit[2]
            return
        if name not in f and kind != "delete":
            return
        if kind == "delete":
            if name in f:
                del f[name]
            return
        del f[name]
        if kind in ("json", "array"):
            f[name] = edit[2]
        elif kind == "soft":
            f[name] = h5py.SoftLink("/" + edit[2])
        elif kind == "external":
            f[name] = h5py.ExternalLink(str(secret_h5), "x")
        else:
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_external(str(secret).encode(), 0, 8)
            if name.startswith("packed/"):  # 8 bytes of the packed dtype, as a reader expects
                dtype = np.dtype(name.removeprefix("packed/"))
                kind_id = h5py.h5t.py_create(dtype)
                space = h5py.h5s.create_simple((8 // dtype.itemsize,))
            else:
                kind_id = h5py.h5t.C_S1.copy()
                kind_id.set_size(8)
                space = h5py.h5s.create(h5py.h5s.SCALAR)
            h5py.h5d.create(f.id, name.encode(), kind_id, space, dcpl=plist)


def apply_edits(path: Path, edits: list[tuple[Any, ...]], secret: Path, secret_h5: Path) -> None:
    """Damage ``path`` as a fuzzer case does (``secret``: what links and storage point at)."""
    # h5py rewrites first, on a valid file: h5py writing into a file whose bytes are
    # already damaged can crash the fuzzer itself, which is not what is tested here.
    for edit in sorted(edits, key=lambda e: e[0] in ("flip", "truncate", "overwrite")):
        try:
            if edit[0] in ("flip", "truncate", "overwrite"):
                apply_bytes(path, edit)
            else:
                apply_h5(path, edit, secret, secret_h5)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, OverflowError):
            break  # h5py could not make this edit (the file is already damaged)


def leaked(value: Any) -> bool:
    """Whether a value read from a checkpoint holds any of the secret's bytes."""
    if isinstance(value, np.ndarray):
        return b"s3cr3t" in value.tobytes() or "s3cr3t" in repr(value)
    return "s3cr3t" in repr(value)


def read_everything(directory: Path, path: Path) -> None:
    """Every read path; returns quietly or raises an expman exception."""
    outcomes: list[Any] = []
    one_line: list[str] = []
    for read in (
        lambda: read_metadata(path),
        lambda: CheckpointManager(directory).checkpoints(),
        lambda: CheckpointManager(directory).restore_latest(target := state(0)) and target,
        lambda: CheckpointManager(directory).load(),
    ):
        try:
            outcomes.append(read())
        except ArchitectureMismatchError as error:
            outcomes.append(str(error))
        except ExpmanError as error:
            outcomes.append(str(error))
            one_line.append(str(error))
            event(_outcome(error))
    assert not any(leaked(o) for o in outcomes), outcomes
    assert not [m for m in one_line if "\n" in m]


def _outcome(error: ExpmanError) -> str:
    """How a read failed, for the run's statistics (--hypothesis-show-statistics)."""
    if "did not finish parsing" in str(error):
        return "HDF5 looped: the helper was stopped at its time limit"
    if "crashed parsing" in str(error):
        return "HDF5 crashed: in the helper"
    return type(error).__name__


def show(repo: Path) -> None:
    """``expman show base``: every checkpoint on one line (DAMAGED and why, if it is)."""
    shown = expman_in_process(repo, "show", "base")
    assert (shown.returncode, shown.stderr) == (0, ""), shown
    lines = shown.stdout.splitlines()
    listing = lines[lines.index(next(l for l in lines if l.startswith("  checkpoints:"))) + 1 :]
    listing = listing[: listing.index("  params:")]
    assert listing and all(line.startswith("    step ") for line in listing), shown.stdout
    assert not leaked(shown.stdout)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=st.lists(st.one_of(byte_edits, h5_edits), min_size=1, max_size=4))
def test_mutated_checkpoints_give_only_expman_errors(
    edits: list[tuple[Any, ...]], original: Path, experiment: Path, tmp_path: Path, alarm: None
) -> None:
    case = tmp_path / f"case-{os.getpid()}-{id(edits)}"
    directory = experiment / ".expman" / "checkpoints" / "base"
    shutil.copytree(original, directory)  # copies: strangers' files
    case.mkdir()
    secret = case / "token.txt"
    secret.write_text(SECRET)
    secret_h5 = case / "secret.h5"
    with h5py.File(secret_h5, "w") as f:
        f["x"] = SECRET
    path = directory / "ckpt-000002.h5"
    _cases[0] += 1
    if PROGRESS:  # the count, and the case running (what a crash leaves to reproduce)
        Path(PROGRESS).write_text(f"{_cases[0]}\n{edits!r}\n")
    signal.alarm(20)
    # An alarm cannot stop a loop inside HDF5's C code: this watchdog then ends the
    # whole process with every thread's stack, a failure rather than a hang.
    faulthandler.dump_traceback_later(60, exit=True)
    try:
        apply_edits(path, edits, secret, secret_h5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_everything(directory, path)
            show(experiment)
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        shutil.rmtree(case, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
