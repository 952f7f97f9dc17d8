"""Damaged and hostile checkpoint files: the exact expman error, nothing read from outside.

The corpus is tests/hostile_checkpoints.py. Each case damages step 3 of a
directory that also holds valid steps 1 and 2, then checks what a user sees
through every read path: ``read_metadata``, ``checkpoints()``, ``restore_latest``
(or ``load``), and that steps 1 and 2 are byte for byte unchanged and readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from expman import (
    CheckpointCorruptError,
    CheckpointIndexWarning,
    CheckpointManager,
    CheckpointReadError,
    CheckpointSkippedWarning,
    ExpmanError,
    read_metadata,
)
from expman.checkpoints._sandbox import check_whole
from tests.hostile_checkpoints import CASES, SECRET, Case, state, write_steps


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.name in ("ckpt-000001.h5", "ckpt-000002.h5")
    }


@pytest.fixture
def three_steps(tmp_path: Path) -> Path:
    return write_steps(tmp_path / "model_dir", packed=True)


@pytest.fixture(autouse=True)
def never_hang() -> Iterator[None]:
    """A reader that blocks (a FIFO) fails the test instead of hanging the suite."""

    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError("a read path hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file_gives_the_exact_error_and_nothing_else(case: Case, tmp_path: Path) -> None:
    three_steps = write_steps(tmp_path / "model_dir", packed=case.packed)
    path = three_steps / "ckpt-000003.h5"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    before = digests(three_steps)
    case.damage(path, scratch)
    expected = case.message(path)
    assert "\n" not in expected
    manager = CheckpointManager(three_steps)

    if case.stage == "metadata":
        with pytest.raises(case.error) as caught:
            read_metadata(path)
        assert type(caught.value) is case.error
        assert str(caught.value) == expected
        listed = {c.step: c for c in manager.checkpoints()}
        assert [s for s, c in listed.items() if c.valid] == [1, 2]
        assert listed[3].error == expected
        with pytest.raises(case.error) as restored:
            manager.restore_latest(state(0))
    else:
        meta = read_metadata(path)
        assert SECRET not in repr(meta)
        with pytest.raises(case.error) as restored:
            if case.stage == "load":
                manager.load(3)
            else:
                manager.restore_latest(state(0))
    assert type(restored.value) is case.error
    assert str(restored.value) == expected

    assert SECRET not in expected
    assert digests(three_steps) == before
    target = state(0)
    assert manager.restore(target, step=2) == 2
    np.testing.assert_array_equal(target["dnn/logits/kernel"], state(2)["dnn/logits/kernel"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validating_a_strangers_file_refuses_it_as_a_restore_would(
    case: Case, tmp_path: Path
) -> None:
    """What pull runs on a downloaded checkpoint: every check before a tensor is read."""
    path = write_steps(tmp_path / "model_dir", packed=case.packed) / "ckpt-000003.h5"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    case.damage(path, scratch)
    with pytest.raises(case.error) as caught:
        check_whole(path)
    assert type(caught.value) is case.error
    assert str(caught.value) == case.message(path)


def test_validating_leaves_tensor_checksums_to_the_restore(three_steps: Path) -> None:
    path = three_steps / "ckpt-000003.h5"
    with h5py.File(path, "r+") as f:
        f["packed/float32"][45] = 42.0  # same layout, other bytes (of dnn/logits/kernel)
    check_whole(path)  # no error: the layout is sound
    with pytest.raises(CheckpointCorruptError) as caught:
        CheckpointManager(three_steps).restore_latest(state(0))
    assert str(caught.value).startswith(
        f"{path} is corrupt: tensor 'dnn/logits/kernel' fails its checksum (recorded xxh3-64:"
    )


def make_fifo(path: Path, outside: Path) -> None:
    os.mkfifo(path)


def make_directory(path: Path, outside: Path) -> None:
    path.mkdir()


def make_socket(path: Path, outside: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()


def make_symlink_out(path: Path, outside: Path) -> None:
    path.symlink_to(outside)


def make_dangling_symlink(path: Path, outside: Path) -> None:
    path.symlink_to(path.parent / "nowhere.h5")


SKIPPED = [
    (make_fifo, "it is not a regular file"),
    (make_directory, "it is not a regular file"),
    (make_socket, "it is not a regular file"),
    (make_symlink_out, "it is a symlink that leaves the checkpoint directory"),
    (make_dangling_symlink, "it is a dangling symlink"),
]


@pytest.mark.parametrize(("make", "reason"), SKIPPED, ids=[m.__name__ for m, _ in SKIPPED])
def test_only_regular_files_of_the_directory_are_opened(
    make: object, reason: str, three_steps: Path, tmp_path: Path
) -> None:
    path = three_steps / "ckpt-000003.h5"
    outside = tmp_path / "elsewhere" / "ckpt-000003.h5"
    shutil.move(path, outside.parent.mkdir() or outside)  # a valid checkpoint, outside
    make(path, outside)  # type: ignore[operator]
    warning = f"skipped {path}: {reason}; move it away"
    with pytest.warns(CheckpointSkippedWarning) as caught:
        # The index names ckpt-000003.h5, which a dangling symlink does not provide.
        warnings.filterwarnings("ignore", category=CheckpointIndexWarning)
        manager = CheckpointManager(three_steps)
        assert [c.step for c in manager.checkpoints()] == [1, 2]
        target = state(0)
        assert manager.restore_latest(target) == 2
        assert manager.save(4, state(4), force=True)
    skipped = {str(w.message) for w in caught if w.category is CheckpointSkippedWarning}
    assert skipped == {warning}
    np.testing.assert_array_equal(target["dnn/logits/kernel"], state(2)["dnn/logits/kernel"])


def test_read_metadata_of_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "ckpt-000001.h5"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointReadError) as caught:
        read_metadata(fifo)
    assert str(caught.value) == f"cannot read checkpoint {fifo} (not a regular file): move it away"


def test_a_symlink_inside_the_directory_is_followed(three_steps: Path) -> None:
    path = three_steps / "ckpt-000003.h5"
    path.rename(three_steps / "kept-aside.h5")
    path.symlink_to("kept-aside.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CheckpointManager(three_steps).restore_latest(state(0)) == 3


def test_only_the_canonical_name_counts(three_steps: Path) -> None:
    (three_steps / "ckpt-000003.h5").rename(three_steps / "ckpt-3.h5")
    shutil.copy(three_steps / "ckpt-000002.h5", three_steps / "ckpt-0000002.h5")
    manager = CheckpointManager(three_steps)
    assert [c.step for c in manager.checkpoints()] == [1, 2]
    with pytest.warns(CheckpointIndexWarning):  # the index names ckpt-000003.h5
        assert manager.restore_latest(state(0)) == 2


def test_a_deleted_directory_is_a_read_error(three_steps: Path) -> None:
    manager = CheckpointManager(three_steps)
    shutil.rmtree(three_steps)
    expected = (
        f"cannot read checkpoint directory {three_steps} (No such file or directory): "
        "check that it exists and is readable"
    )
    for call in (manager.checkpoints, lambda: manager.restore_latest(state(0))):
        with pytest.raises(CheckpointReadError) as caught:
            call()
        assert str(caught.value) == expected


def test_a_file_removed_between_listing_and_reading_is_skipped(three_steps: Path) -> None:
    manager = CheckpointManager(three_steps)
    (three_steps / "ckpt-000003.h5").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointIndexWarning)
        assert [c.step for c in manager.checkpoints()] == [1, 2]


def _as_another_user(reads: dict[str, Any]) -> dict[str, list[str]]:
    """Each read's outcome, in a forked child that runs as nobody when the tests run as root.

    Root reads any file whatever its mode, so only another user meets a mode-000
    file as a user does.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            outcomes: dict[str, list[str]] = {}
            warnings.simplefilter("ignore")
            for label, read in reads.items():
                try:
                    outcomes[label] = ["returned", repr(read())]
                except ExpmanError as error:
                    outcomes[label] = [type(error).__name__, str(error)]
                except BaseException as error:
                    outcomes[label] = [f"raw {type(error).__name__}", str(error)]
            os.write(write_end, json.dumps(outcomes).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    result: dict[str, list[str]] = json.loads(data)
    return result


def test_a_mode_000_checkpoint_is_a_read_error_on_every_path(tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp())  # traversable by another user, unlike tmp_path
    try:
        shared.chmod(0o755)
        directory = shared / "model_dir"
        with CheckpointManager(directory) as manager:
            for step in (1, 2, 3):
                manager.save(step, state(step), force=True)
        locked = directory / "ckpt-000003.h5"
        locked.chmod(0)
        message = (
            f"cannot read checkpoint {locked} (Permission denied): check that it exists and "
            "is readable, or move it away"
        )
        outcomes = _as_another_user(
            {
                "read_metadata": lambda: read_metadata(locked),
                "restore_latest": lambda: CheckpointManager(directory).restore_latest(state(0)),
                "checkpoints": lambda: [
                    (c.step, c.error) for c in CheckpointManager(directory).checkpoints()
                ],
            }
        )
        assert outcomes == {
            "read_metadata": ["CheckpointReadError", message],
            "restore_latest": ["CheckpointReadError", message],  # never a silent step 2
            "checkpoints": ["returned", repr([(1, None), (2, None), (3, message)])],
        }
    finally:
        shutil.rmtree(shared)


def test_tied_names_share_one_array_so_a_load_allocates_what_the_file_holds(
    tmp_path: Path,
) -> None:
    """300 names tied to one 1 MiB tensor: a load must not allocate 300 MiB."""
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, {"x": np.arange(2**18, dtype=np.float32)}, force=True)
    path = tmp_path / "ckpt-000001.h5"
    with h5py.File(path, "r+") as f:
        manifest = json.loads(f["meta/tensors"][()])
        arch = json.loads(f["meta/architecture"][()])
        manifest += [dict(manifest[0], name=f"x{i}") for i in range(300)]
        arch["tensors"] += [dict(arch["tensors"][0], name=f"x{i}") for i in range(300)]
        arch["tensors"].sort(key=lambda t: t["name"])
        for name, value in (("meta/tensors", manifest), ("meta/architecture", arch)):
            del f[name]
            f[name] = json.dumps(value)
    loaded = CheckpointManager(tmp_path).load()
    assert len(loaded) == 301
    assert len({id(value) for value in loaded.values()}) == 1
    np.testing.assert_array_equal(loaded["x299"], np.arange(2**18, dtype=np.float32))


def test_a_reader_deep_in_its_own_stack_gets_an_expman_error(three_steps: Path) -> None:
    """Params nested 100 deep (allowed), read 900 frames down: an expman error."""
    path = three_steps / "ckpt-000003.h5"
    with h5py.File(path, "r+") as f:
        del f["meta/params"]
        f["meta/params"] = '{"k":' * 100 + "1" + "}" * 100

    def deep(frames: int, file: Path) -> Any:
        return read_metadata(file) if frames == 0 else deep(frames - 1, file)

    assert deep(300, path).params["k"]["k"]["k"]
    stranger = three_steps.parent / "copy" / path.name  # checked by the helper process again
    stranger.parent.mkdir()
    shutil.copy(path, stranger)
    with pytest.raises(CheckpointCorruptError) as caught:
        deep(900, stranger)
    assert str(caught.value) == (
        f"{stranger} has damaged metadata (its metadata nests too deeply to be read this deep "
        "in the stack): restore another step, or move the file away"
    )
    with pytest.raises(CheckpointCorruptError, match="has damaged metadata"):
        deep(900, path)  # known sound in this process: parsed here, as deep
