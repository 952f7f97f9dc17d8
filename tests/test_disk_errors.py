"""A full disk or a read-only directory: a clear error, and nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expman import CheckpointManager, CheckpointPolicy, CheckpointWriteError
from tests.conftest import remount_read_only

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
