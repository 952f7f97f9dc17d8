"""A stranger's checkpoint is parsed by HDF5 first in a helper process, under a time limit.

The file HDF5 loops on is the one the long fuzz run found: the fuzzer's edits
``LOOP_EDITS`` applied to the fuzzer's own original file. Reading it used to
hang the reader forever (docs/checkpoint-format.md, "A stranger's file").
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from expman import CheckpointCorruptError, CheckpointManager, CheckpointReadError, read_metadata
from expman.checkpoints import _sandbox
from tests.cli import expman
from tests.hostile_checkpoints import SECRET
from tests.test_fuzz_checkpoints import apply_bytes, apply_edits

LOOP_EDITS = [("external_storage", "meta/params"), ("overwrite", 2266, b"\x89HDF\r\n\x1a\n")]
LIMIT = "2"  # seconds: EXPMAN_HDF5_TIME_LIMIT, so that the tests wait 2 s, not 10
REMEDY = "restore another step, or move the file away"


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A reader that hangs in HDF5's C code ends the test run with a traceback, not a hang."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPMAN_HDF5_TIME_LIMIT", LIMIT)


def fuzzer_state(step: int) -> dict[str, Any]:
    """The state the fuzzer's files held when it found the loops below."""
    return {
        "dnn/hiddenlayer_0/kernel": np.full((4, 10), step, np.float32),
        "dnn/logits/kernel": np.full((10, 3), step, np.float32),
        "global_step": step,
    }


def fuzzer_original(directory: Path) -> Path:
    """The fuzzer's original checkpoints (steps 1 and 2) as they were when it found the
    loops below (one dataset per tensor): the byte edits below land where they did then.
    Returns step 2's file."""
    with CheckpointManager(directory, params={"lr": 0.1}, pack_max_bytes=0) as manager:
        for step in (1, 2):
            manager.save(step, fuzzer_state(step), metrics={"loss": 1 / step}, force=True)
    return directory / "ckpt-000002.h5"


def strangers_copy(tmp_path: Path) -> Path:
    """A copy of the fuzzer's original step 2: a file this process never wrote nor checked."""
    path = fuzzer_original(tmp_path / "model_dir")
    stranger = tmp_path / "copy" / path.name
    stranger.parent.mkdir()
    shutil.copy(path, stranger)
    return stranger


def make_it_loop(path: Path, scratch: Path) -> None:
    """Damage ``path`` with the edits HDF5 loops forever on."""
    scratch.mkdir(parents=True, exist_ok=True)
    secret = scratch / "token.txt"
    secret.write_text(SECRET)
    secret_h5 = scratch / "secret.h5"
    with h5py.File(secret_h5, "w") as f:
        f["x"] = SECRET
    apply_edits(path, LOOP_EDITS, secret, secret_h5)


def timed_out(path: Path, limit: str = LIMIT) -> str:
    return (
        f"{path} is truncated or damaged (HDF5 did not finish parsing it within {limit} s): "
        f"{REMEDY}"
    )


def children() -> list[int]:
    """This process's child processes, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(text.rpartition(")")[2].split()[1]) == os.getpid():
                found.append(int(entry))
    return found


def test_a_file_hdf5_loops_on_is_corrupt_within_the_limit(tmp_path: Path, limit: None) -> None:
    directory = tmp_path / "model_dir"
    path = fuzzer_original(directory)
    make_it_loop(path, tmp_path / "scratch")

    started = time.monotonic()
    with pytest.raises(CheckpointCorruptError) as caught:
        read_metadata(path)
    assert str(caught.value) == timed_out(path)
    assert time.monotonic() - started < 2 + 5  # the limit, and the helper's start
    # Restoring refuses the same file (not a fall back to step 1, nor a start from scratch).
    with pytest.raises(CheckpointCorruptError) as caught:
        CheckpointManager(directory).restore_latest(into=fuzzer_state(0))
    assert str(caught.value) == timed_out(path)
    infos = CheckpointManager(directory).checkpoints()
    assert [(i.step, i.error) for i in infos] == [(1, None), (2, timed_out(path))]


def test_a_bit_flipped_in_a_heap_is_corrupt_within_the_limit(tmp_path: Path, limit: None) -> None:
    """The second loop the fuzzer found: a bit flip and two bytes in the global heap."""
    directory = tmp_path / "model_dir"
    path = fuzzer_original(directory)
    stranger = tmp_path / "copy" / "model_dir"
    shutil.copytree(directory, stranger)
    path = stranger / path.name
    for edit in [("flip", 158204209, 2), ("overwrite", 12350, b"a\x00")]:
        apply_bytes(path, edit)
    with pytest.raises(CheckpointCorruptError) as caught:
        read_metadata(path)
    assert str(caught.value) == timed_out(path)


def test_a_changed_file_is_checked_again(tmp_path: Path, limit: None) -> None:
    path = fuzzer_original(tmp_path / "model_dir")
    assert read_metadata(path).step == 2  # written here: read in this process
    make_it_loop(path, tmp_path / "scratch")  # damaged in place: a stranger again
    with pytest.raises(CheckpointCorruptError) as caught:
        read_metadata(path)
    assert str(caught.value) == timed_out(path)


def test_a_helper_that_crashes_is_reported_and_replaced(tmp_path: Path) -> None:
    path = fuzzer_original(tmp_path / "model_dir")
    sound = tmp_path / "copy" / "ckpt-000001.h5"
    sound.parent.mkdir()
    shutil.copy(path.parent / "ckpt-000001.h5", sound)  # a copy: a stranger's file
    make_it_loop(path, tmp_path / "scratch")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_metadata(path)
        except BaseException as error:
            outcome.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 8  # within the limit (10 s), even on a loaded machine
    while not children() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the helper is parsing the file, or looping inside HDF5 already
    (helper,) = children()
    os.kill(helper, signal.SIGSEGV)  # what a crash in HDF5's C code does to it
    reader.join()
    assert [str(e) for e in outcome] == [
        f"{path} is truncated or damaged (HDF5 crashed parsing it: signal 11, SIGSEGV): {REMEDY}"
    ]
    assert isinstance(outcome[0], CheckpointCorruptError)
    assert read_metadata(sound).step == 1  # a fresh helper checks the next file
    assert children() and children() != [helper]


WRITER = """\
import os, shutil, sys
from pathlib import Path
from typing import Any
import numpy as np
from expman import CheckpointManager, read_metadata

def children():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(text.rpartition(")")[2].split()[1]) == os.getpid():
                found.append(entry)
    return found

directory = Path(sys.argv[1])
for async_save in (False, True):
    with CheckpointManager(directory / str(async_save), async_save=async_save) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"w": np.full(3, step, np.float32)}, force=True)
    manager = CheckpointManager(directory / str(async_save))
    state = {"w": np.zeros(3, np.float32)}
    assert manager.restore_latest(into=state) == 3 and state["w"][0] == 3
    assert [info.step for info in manager.checkpoints() if info.valid] == [1, 2, 3]
    assert manager.load(1)["w"][0] == 1
    assert read_metadata(directory / str(async_save) / "ckpt-000002.h5").step == 2
print("after writing and reading:", len(children()))
shutil.copy(directory / "True" / "ckpt-000003.h5", directory / "ckpt-000003.h5")
assert read_metadata(directory / "ckpt-000003.h5").step == 3
print("after reading a copy:", len(children()))
"""


def test_files_this_process_wrote_never_start_the_helper(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    ran = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "dirs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["after writing and reading: 0", "after reading a copy: 1"]


def test_expman_show_and_run_with_a_file_hdf5_loops_on(workspace: Path, tmp_path: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    path = fuzzer_original(workspace / ".expman" / "checkpoints" / "base")
    make_it_loop(path, tmp_path / "scratch")
    env = {"EXPMAN_HDF5_TIME_LIMIT": LIMIT}

    shown = expman(workspace, "show", "base", env=env)
    assert shown.returncode == 0, shown.stderr
    size = path.stat().st_size
    assert f"    step      2  {size:>10} bytes  -  DAMAGED: {timed_out(path)}" in shown.stdout
    assert shown.stderr == ""

    ran = expman(workspace, "run", "base", env=env)
    assert ran.returncode == 8, ran.stderr
    assert f"expman: error: {timed_out(path)}" in ran.stderr.splitlines()
    assert "Traceback" not in ran.stderr


def test_a_helper_that_cannot_start_is_one_expman_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interpreter gone (a removed virtualenv) or no process slot left: one line."""
    stranger = strangers_copy(tmp_path)
    _sandbox._stop()  # no helper running: the next stranger's file starts one
    missing = tmp_path / "removed-venv" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(missing))
    with pytest.raises(CheckpointReadError) as caught:
        read_metadata(stranger)
    assert str(caught.value) == (
        f"cannot check checkpoint files: the checking process ({missing}) could not start "
        "(No such file or directory): check that this Python can run it, then retry"
    )


def test_the_helper_never_imports_the_users_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training repository's own module names (here h5py.py) do not shadow the helper's."""
    stranger = strangers_copy(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "h5py.py").write_text("raise ImportError('the project\\'s own h5py.py')\n")
    monkeypatch.chdir(project)  # expman run starts the training script in its worktree
    _sandbox._stop()
    assert read_metadata(stranger).step == 2
