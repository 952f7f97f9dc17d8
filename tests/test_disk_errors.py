"""A full disk or a read-only directory: a clear error, and nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expman import CheckpointManager, CheckpointPolicy, CheckpointWriteError
from tests.conftest import _mount_tmpfs, remount_read_only

BLOCK = {"w": np.arange(40_000, dtype=np.float64)}  # 320 KB a checkpoint


def state(step: int) -> dict[str, np.ndarray]:
    return {"w": BLOCK["w"] + step}


def test_full_disk_keeps_every_earlier_checkpoint(small_filesystem: Path) -> None:
    directory = small_filesystem / "model_dir"
    manager = CheckpointManager(directory, policy=CheckpointPolicy(keep_max=None))
    saved = []
    with pytest.raises(CheckpointWriteError) as caught:
        for step in range(1, 100):
            manager.save(step, state(step), force=True)
            saved.append(step)
    failed = saved[-1] + 1
    assert len(saved) >= 3
    assert str(caught.value) == (
        f"could not save checkpoint step {failed} in {directory}: no space left on the "
        "device: free some space, then save again (earlier checkpoints are intact)"
    )
    assert isinstance(caught.value, OSError)
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []
    reader = CheckpointManager(directory)
    assert [c.step for c in reader.checkpoints()] == saved
    for step in saved:
        np.testing.assert_array_equal(reader.load(step)["w"], state(step)["w"])
    # Once there is room again, the same step saves.
    (directory / f"ckpt-{saved[0]:06d}.h5").unlink()
    (directory / f"ckpt-{saved[1]:06d}.h5").unlink()
    assert manager.save(failed, state(failed), force=True)
    np.testing.assert_array_equal(reader.load(failed)["w"], state(failed)["w"])


def test_read_only_directory(small_filesystem: Path) -> None:
    directory = small_filesystem / "model_dir"
    CheckpointManager(directory).save(1, state(1), force=True)
    before = sorted(p.name for p in directory.iterdir())
    remount_read_only(small_filesystem)

    manager = CheckpointManager(directory)  # reading still works
    target = state(0)
    assert manager.restore_latest(target) == 1
    np.testing.assert_array_equal(target["w"], state(1)["w"])
    with pytest.raises(CheckpointWriteError) as caught:
        manager.save(2, state(2), force=True)
    assert str(caught.value) == (
        f"could not save checkpoint step 2 in {directory}: the directory is not writable: "
        "fix its permissions or choose another directory (earlier checkpoints are intact)"
    )
    assert sorted(p.name for p in directory.iterdir()) == before

    with pytest.raises(CheckpointWriteError) as created:
        CheckpointManager(small_filesystem / "new_dir")
    assert str(created.value) == (
        f"cannot create checkpoint directory {small_filesystem / 'new_dir'}: the directory "
        "is not writable: fix its permissions or choose another directory"
    )


FILL_CHILD = """
import os, sys
from pathlib import Path
import numpy as np
from expman import (
    CheckpointManager, CheckpointPolicy, CheckpointSaveFailedError, CheckpointWriteError,
)
directory, free, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
filler = directory.parent / "filler"
info = os.statvfs(directory)
try:
    with open(filler, "wb") as handle:
        handle.write(bytes(max(0, info.f_bavail * info.f_frsize - free)))
except OSError:
    pass
manager = CheckpointManager(
    directory, policy=CheckpointPolicy(keep_max=None), async_save=mode == "async"
)
try:
    # Many tensors: most of what HDF5 writes at close is then its own metadata.
    manager.save(3, {f"layer{i}/w": np.full(1000, i, np.float32) for i in range(100)}, force=True)
    manager.close()
    print("saved")
except CheckpointWriteError as error:
    print("refused:", error)
except CheckpointSaveFailedError as error:
    print("refused:", error.__cause__)
"""


def test_a_full_disk_at_50_fill_levels_never_crashes_nor_loses_a_checkpoint(
    tmp_path: Path,
) -> None:
    """Each level in a fresh process, sync and async in turn: with HDF5 writing into a
    full disk, every level crashed the interpreter (segmentation fault) before the fix."""
    import subprocess

    small_filesystem = tmp_path / "fs"
    _mount_tmpfs(small_filesystem, "4m")
    try:
        _fill_levels(small_filesystem)
    finally:
        subprocess.run(["umount", "-l", str(small_filesystem)], check=False)


def _fill_levels(small_filesystem: Path) -> None:
    import hashlib
    import subprocess
    import sys

    directory = small_filesystem / "model_dir"
    manager = CheckpointManager(directory, policy=CheckpointPolicy(keep_max=None))
    for step in (1, 2):
        manager.save(step, state(step), force=True)
    kept = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*.h5")}
    outcomes = []
    for level in range(50):
        free, mode = level * 20_000, ("sync", "async")[level % 2]
        child = subprocess.run(
            [sys.executable, "-c", FILL_CHILD, str(directory), str(free), mode],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, (free, mode, child.returncode, child.stderr[-2000:])
        assert "Traceback" not in child.stderr and "Exception ignored" not in child.stderr
        outcome = child.stdout.strip()
        assert outcome == "saved" or outcome.startswith("refused: could not save checkpoint step 3")
        outcomes.append(outcome.split(":")[0])
        (small_filesystem / "filler").unlink(missing_ok=True)
        for path in directory.iterdir():
            if path.name not in kept and path.name != "checkpoint":
                path.unlink()
        assert {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*.h5")
        } == kept
    assert {"saved", "refused"} == set(outcomes)  # both sides of the limit were tried
    reader = CheckpointManager(directory)
    for step in (1, 2):
        np.testing.assert_array_equal(reader.load(step)["w"], state(step)["w"])


def test_short_writes_and_reads_still_move_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pwritev and preadv may move fewer bytes than asked (a signal, a network filesystem)."""
    import os

    from expman.checkpoints import _durable

    def at_most_7_bytes(call):  # type: ignore[no-untyped-def]
        def short(fd: int, views: list[memoryview], offset: int) -> int:
            return int(call(fd, [views[0][:7]], offset))

        return short

    monkeypatch.setattr(_durable.os, "pwritev", at_most_7_bytes(os.pwritev))
    monkeypatch.setattr(_durable.os, "preadv", at_most_7_bytes(os.preadv))
    state = {f"t{i}": np.arange(i, 3 * i + 5, dtype=np.float32) for i in range(20)}
    CheckpointManager(tmp_path).save(1, state, force=True)  # small tensors: packed
    target = {name: np.zeros_like(value) for name, value in state.items()}
    assert CheckpointManager(tmp_path).restore_latest(target) == 1
    for name, value in state.items():
        np.testing.assert_array_equal(target[name], value)
