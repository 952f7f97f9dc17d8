"""CheckpointManager as a training script uses it: schedule, retention, restore."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import expman
import expman.checkpoints._manager
from expman import (
    ArchitectureMismatchError,
    CheckpointExistsError,
    CheckpointIndexWarning,
    CheckpointManager,
    CheckpointNotFoundError,
    CheckpointPolicy,
    CheckpointSaveFailedError,
    ModelConfigChangedWarning,
    PartialRestoreWarning,
)
from expman.checkpoints._state import SameAs
from tests.conftest import estimator_state, zeros_like_state


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(expman.checkpoints._manager.time, "monotonic", fake)
    return fake


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def train(
    manager: CheckpointManager,
    state: dict[str, Any],
    start: int,
    stop: int,
    clock: FakeClock | None = None,
    seconds_per_step: float = 0.0,
) -> list[int]:
    saved = []
    for step in range(start, stop):
        state["dnn/logits/bias"] += 1
        state["global_step"] = np.int64(step + 1)
        if clock is not None:
            clock.now += seconds_per_step
        if manager.save(step + 1, state, metrics={"loss": 1.0 / (step + 1)}):
            saved.append(step + 1)
    return saved


def test_estimator_schedule_first_step_every_600_s_last_step_keep_5(
    ckpt_dir: Path, clock: FakeClock
) -> None:
    manager = CheckpointManager(ckpt_dir)
    state = estimator_state()
    saved = train(manager, state, 0, 500, clock, seconds_per_step=7.0)
    manager.close()
    # first step, then every 600 s (86 steps of 7 s = 602 s), then the last step at close
    assert saved == [1, 87, 173, 259, 345, 431]
    assert files(ckpt_dir) == [
        "checkpoint",
        "ckpt-000173.h5",
        "ckpt-000259.h5",
        "ckpt-000345.h5",
        "ckpt-000431.h5",
        "ckpt-000500.h5",
    ]
    assert [c.step for c in manager.checkpoints()] == [173, 259, 345, 431, 500]


def test_save_every_n_steps(ckpt_dir: Path, clock: FakeClock) -> None:
    policy = CheckpointPolicy(save_every_steps=50, save_every_secs=None, keep_max=None)
    manager = CheckpointManager(ckpt_dir, policy=policy)
    saved = train(manager, estimator_state(), 0, 120, clock, 1.0)
    manager.close()
    assert saved == [1, 50, 100]
    assert [c.step for c in manager.checkpoints()] == [1, 50, 100, 120]


def test_default_directory_is_a_new_temporary_directory(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="expman"):
        manager = CheckpointManager()
    assert manager.directory.is_dir()
    assert manager.directory.name.startswith("expman-")
    assert caplog.messages == [
        f"Using temporary directory as checkpoint directory: {manager.directory}"
    ]


def test_resume_continues_from_the_latest_step(ckpt_dir: Path) -> None:
    state = estimator_state()
    first = CheckpointManager(ckpt_dir)
    assert first.restore_latest(into=state) == 0
    train(first, state, 0, 200)
    first.close()
    assert files(ckpt_dir) == ["checkpoint", "ckpt-000001.h5", "ckpt-000200.h5"]

    rebuilt = estimator_state(seed=99)
    kernel = rebuilt["dnn/hiddenlayer_0/kernel"]
    second = CheckpointManager(ckpt_dir)
    start = second.restore_latest(into=rebuilt)
    assert start == 200
    assert rebuilt["global_step"] == 200
    assert rebuilt["dnn/hiddenlayer_0/kernel"] is kernel  # filled in place
    for name, value in state.items():
        np.testing.assert_array_equal(rebuilt[name], value)
    train(second, rebuilt, start, 400)
    second.close()
    assert files(ckpt_dir) == [
        "checkpoint",
        "ckpt-000001.h5",
        "ckpt-000200.h5",
        "ckpt-000400.h5",
    ]
    assert second.latest() is not None and second.latest().step == 400  # type: ignore[union-attr]


def test_nested_state_is_filled_in_place(ckpt_dir: Path) -> None:
    state = {"model": {"w": np.arange(4.0), "b": np.float32(2)}, "step": 3}
    CheckpointManager(ckpt_dir).save(3, state, force=True)
    target = {"model": {"w": np.zeros(4), "b": np.float32(0)}, "step": 0}
    w = target["model"]["w"]
    assert CheckpointManager(ckpt_dir).restore(target) == 3
    assert target["model"]["w"] is w
    np.testing.assert_array_equal(w, np.arange(4.0))
    assert target == {"model": {"w": w, "b": np.float32(2)}, "step": 3}


def test_mismatch_is_refused_before_any_tensor_is_touched(ckpt_dir: Path) -> None:
    saved = estimator_state((10, 10))
    saved["dnn/logits/bias"][:] = 123.456
    manager = CheckpointManager(ckpt_dir, experiment="base", code_commit="f" * 40)
    manager.save(200, saved, force=True)

    wide = estimator_state((20, 20), seed=5)
    before = {k: np.copy(v) for k, v in wide.items()}
    with pytest.raises(ArchitectureMismatchError) as caught:
        CheckpointManager(ckpt_dir).restore_latest(into=wide)
    for name, value in before.items():
        np.testing.assert_array_equal(wide[name], value)
    message = str(caught.value)
    assert message.splitlines()[0] == (
        f"checkpoint {ckpt_dir}/ckpt-000200.h5 (written by experiment base, commit "
        "ffffffffffff) does not match the model: 9 tensor differences"
    )
    assert message.splitlines()[1:] == [
        "  dnn/hiddenlayer_0/bias: checkpoint [10] vs model [20]",
        "  dnn/hiddenlayer_0/bias/t_0/Adagrad: checkpoint [10] vs model [20]",
        "  dnn/hiddenlayer_0/kernel: checkpoint [4, 10] vs model [4, 20]",
        "  dnn/hiddenlayer_0/kernel/t_0/Adagrad: checkpoint [4, 10] vs model [4, 20]",
        "  dnn/hiddenlayer_1/bias: checkpoint [10] vs model [20]",
        "  dnn/hiddenlayer_1/bias/t_0/Adagrad: checkpoint [10] vs model [20]",
        "  dnn/hiddenlayer_1/kernel: checkpoint [10, 10] vs model [20, 20]",
        "  dnn/hiddenlayer_1/kernel/t_0/Adagrad: checkpoint [10, 10] vs model [20, 20]",
        "  dnn/logits/kernel: checkpoint [10, 3] vs model [20, 3]",
        "to proceed: restore only the matching tensors with a partial restore (partial=True, "
        "or expman run --partial), or start a new experiment for the changed model "
        "(expman new NAME)",
    ]
    assert "123.456" not in message and "123.45" not in message
    assert caught.value.experiment == "base"
    assert caught.value.code_commit == "f" * 40
    assert len(caught.value.diff.shape_changes) == 9


def test_partial_restore_restores_what_matches_and_reports_the_rest(ckpt_dir: Path) -> None:
    saved = estimator_state((10, 10))
    CheckpointManager(ckpt_dir).save(200, saved, force=True)
    wide = estimator_state((10, 20), seed=5)
    untouched = wide["dnn/logits/kernel"].copy()
    manager = CheckpointManager(ckpt_dir)
    with pytest.warns(PartialRestoreWarning) as record:
        assert manager.restore(wide, partial=True) == 200
    np.testing.assert_array_equal(
        wide["dnn/hiddenlayer_0/kernel"], saved["dnn/hiddenlayer_0/kernel"]
    )
    np.testing.assert_array_equal(wide["dnn/logits/kernel"], untouched)
    report = manager.last_restore
    assert report is not None
    assert record[0].message.report is report  # type: ignore[union-attr]
    assert report.skipped == (
        "dnn/hiddenlayer_1/bias: checkpoint [10] vs model [20]",
        "dnn/hiddenlayer_1/bias/t_0/Adagrad: checkpoint [10] vs model [20]",
        "dnn/hiddenlayer_1/kernel: checkpoint [10, 10] vs model [10, 20]",
        "dnn/hiddenlayer_1/kernel/t_0/Adagrad: checkpoint [10, 10] vs model [10, 20]",
        "dnn/logits/kernel: checkpoint [10, 3] vs model [20, 3]",
    )
    assert "dnn/hiddenlayer_0/kernel" in report.restored
    assert str(record[0].message).startswith(
        f"partial restore from {ckpt_dir}/ckpt-000200.h5: 6 tensors restored, 5 skipped: "
    )


def test_model_config_change_with_same_tensors_warns(ckpt_dir: Path) -> None:
    state = estimator_state()
    CheckpointManager(ckpt_dir, model_config={"activation": "relu"}).save(1, state, force=True)
    manager = CheckpointManager(ckpt_dir, model_config={"activation": "tanh"})
    with pytest.warns(ModelConfigChangedWarning) as record:
        assert manager.restore(zeros_like_state(state)) == 1
    assert str(record[0].message) == (
        f"checkpoint {ckpt_dir}/ckpt-000001.h5 was saved with another model config, with "
        'the same tensors: activation: checkpoint "relu" vs model "tanh"'
    )
    assert record[0].filename == __file__  # the warning points at the caller's restore()
    with pytest.warns(ModelConfigChangedWarning) as record:
        assert manager.restore_latest(zeros_like_state(state)) == 1
    assert record[0].filename == __file__


def test_checkpoints_are_never_overwritten(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir)
    manager.save(5, {"w": np.zeros(2)}, force=True)
    original = (ckpt_dir / "ckpt-000005.h5").read_bytes()
    again = CheckpointManager(ckpt_dir)
    for step in (5, 3):
        with pytest.raises(CheckpointExistsError) as caught:
            again.save(step, {"w": np.ones(2)}, force=True)
        assert str(caught.value) == (
            f"cannot save step {step}: {ckpt_dir} already has a checkpoint at step 5, and "
            "checkpoints are never overwritten; restore it first (restore_latest, or "
            "expman.torch.restore) to continue from it, or use another directory"
        )
    assert (ckpt_dir / "ckpt-000005.h5").read_bytes() == original


def test_saving_the_step_just_restored_writes_nothing(ckpt_dir: Path) -> None:
    # nanoGPT evaluates and saves again at the step it resumed from: that was an error.
    first = CheckpointManager(ckpt_dir)
    first.save(5, {"w": np.zeros(2)}, force=True)
    first.close()
    original = (ckpt_dir / "ckpt-000005.h5").read_bytes()
    resumed = CheckpointManager(ckpt_dir)
    state = {"w": np.ones(2)}
    assert resumed.restore_latest(into=state) == 5
    assert resumed.save(5, state, force=True) is False
    assert resumed.save(6, state, force=True) is True
    resumed.close()
    assert (ckpt_dir / "ckpt-000005.h5").read_bytes() == original
    assert sorted(p.name for p in ckpt_dir.glob("ckpt-*.h5")) == [
        "ckpt-000005.h5",
        "ckpt-000006.h5",
    ]


def test_a_fresh_run_in_a_used_directory_is_stopped_at_its_first_save(ckpt_dir: Path) -> None:
    train(CheckpointManager(ckpt_dir), estimator_state(), 0, 10)
    again = CheckpointManager(ckpt_dir)
    with pytest.raises(CheckpointExistsError):
        again.save(1, estimator_state(), force=True)


def test_restore_a_given_step_and_a_missing_one(ckpt_dir: Path) -> None:
    policy = CheckpointPolicy(save_every_steps=2, keep_max=None)
    manager = CheckpointManager(ckpt_dir, policy=policy)
    state = estimator_state()
    train(manager, state, 0, 6)
    target = zeros_like_state(state)
    assert manager.restore(target, step=4) == 4
    assert target["global_step"] == 4
    with pytest.raises(CheckpointNotFoundError) as caught:
        manager.restore(target, step=3)
    assert str(caught.value) == (f"{ckpt_dir} has no checkpoint at step 3 (available: 1, 2, 4, 6)")
    assert isinstance(caught.value, LookupError)


def test_retention_survives_a_restart(ckpt_dir: Path) -> None:
    policy = CheckpointPolicy(keep_max=2, save_every_steps=1)
    train(CheckpointManager(ckpt_dir, policy=policy), estimator_state(), 0, 3)
    assert files(ckpt_dir) == ["checkpoint", "ckpt-000002.h5", "ckpt-000003.h5"]
    state = estimator_state()
    restarted = CheckpointManager(ckpt_dir, policy=policy)
    restarted.restore_latest(state)
    train(restarted, state, 3, 4)
    assert files(ckpt_dir) == ["checkpoint", "ckpt-000003.h5", "ckpt-000004.h5"]


def test_pinned_and_restored_checkpoints_survive_retention(ckpt_dir: Path) -> None:
    policy = CheckpointPolicy(keep_max=2, save_every_steps=1)
    manager = CheckpointManager(ckpt_dir, policy=policy)
    state = estimator_state()
    train(manager, state, 0, 3)
    manager.pin(2)
    train(manager, state, 3, 6)
    assert files(ckpt_dir) == [
        "checkpoint",
        "ckpt-000002.h5",
        "ckpt-000002.pin",
        "ckpt-000005.h5",
        "ckpt-000006.h5",
    ]
    # A restart sees the pin (it is a file, not only in memory).
    restarted = CheckpointManager(ckpt_dir, policy=policy)
    assert [c.step for c in restarted.checkpoints() if c.pinned] == [2]
    restarted.unpin(2)
    # The restored checkpoint is protected for as long as this manager lives.
    restarted.restore(zeros_like_state(state), step=5)
    train(restarted, state, 6, 9)
    assert files(ckpt_dir) == ["checkpoint", "ckpt-000005.h5", "ckpt-000008.h5", "ckpt-000009.h5"]
    with pytest.raises(CheckpointNotFoundError):
        restarted.pin(3)


def test_close_saves_the_last_step_once_and_is_idempotent(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir)
    state = estimator_state()
    assert manager.save(1, state)  # first step
    assert not manager.save(2, state)
    manager.close()
    manager.close()
    assert [c.step for c in manager.checkpoints()] == [1, 2]
    with pytest.raises(ValueError, match="this CheckpointManager is closed"):
        manager.save(3, state)
    other = CheckpointManager(ckpt_dir / "other")
    other.save(7, state, force=True)
    other.close()
    assert [c.step for c in other.checkpoints()] == [7]


def test_context_manager_does_not_save_a_failed_runs_last_state(ckpt_dir: Path) -> None:
    state = estimator_state()
    with pytest.raises(RuntimeError), CheckpointManager(ckpt_dir) as manager:
        manager.save(1, state)
        manager.save(2, state)
        raise RuntimeError("loss is NaN")
    assert [c.step for c in manager.checkpoints()] == [1]
    with CheckpointManager(ckpt_dir / "ok") as ok:
        ok.save(1, state)
        ok.save(2, state)
    assert [c.step for c in ok.checkpoints()] == [1, 2]


def test_checkpoints_lists_metrics_sizes_and_damaged_files(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir, policy=CheckpointPolicy(save_every_steps=1))
    train(manager, estimator_state(), 0, 2)
    (ckpt_dir / "ckpt-000002.h5").write_bytes(b"garbage")
    infos = manager.checkpoints()
    assert [(c.step, c.valid) for c in infos] == [(1, True), (2, False)]
    assert infos[0].metrics == {"loss": 1.0}
    assert infos[0].size == (ckpt_dir / "ckpt-000001.h5").stat().st_size
    assert infos[1].error is not None and "is not an HDF5 file" in infos[1].error


def test_a_damaged_latest_checkpoint_is_an_error_not_a_fresh_start(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir, policy=CheckpointPolicy(save_every_steps=1))
    train(manager, estimator_state(), 0, 2)
    (ckpt_dir / "ckpt-000002.h5").write_bytes(b"garbage")
    with pytest.raises(expman.CheckpointCorruptError):
        CheckpointManager(ckpt_dir).restore_latest(estimator_state())
    assert CheckpointManager(ckpt_dir).restore(estimator_state(), step=1) == 1


def test_missing_or_damaged_index_falls_back_to_a_scan(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir, policy=CheckpointPolicy(save_every_steps=1))
    train(manager, estimator_state(), 0, 3)
    for damage in ("delete", "garble", "dangling"):
        index = ckpt_dir / "checkpoint"
        if damage == "delete":
            index.unlink()
        elif damage == "garble":
            index.write_text("\x00\x01 not an index")
        else:
            index.write_text('model_checkpoint_path: "ckpt-000099.h5"\n')
        with pytest.warns(CheckpointIndexWarning, match="is missing or damaged; found the"):
            assert CheckpointManager(ckpt_dir).restore_latest(estimator_state()) == 3
    state = estimator_state()
    with pytest.warns(CheckpointIndexWarning):
        restarted = CheckpointManager(ckpt_dir, policy=CheckpointPolicy(save_every_steps=1))
        restarted.restore_latest(state)
    train(restarted, state, 3, 4)  # rewrites the index
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CheckpointManager(ckpt_dir).restore_latest(estimator_state()) == 4


def test_stale_temporary_files_of_dead_writers_are_removed(ckpt_dir: Path) -> None:
    ckpt_dir.mkdir()
    dead = ckpt_dir / ".ckpt-000005.h5.tmp-999999999-0badf00d"
    alive = ckpt_dir / f".ckpt-000006.h5.tmp-{os.getpid()}-0badf00d"
    unrelated = ckpt_dir / "notes.txt"
    for path in (dead, alive, unrelated):
        path.write_bytes(b"partial")
    CheckpointManager(ckpt_dir)
    assert files(ckpt_dir) == [alive.name, "notes.txt"]


def test_async_save_copies_on_the_callers_thread(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir, async_save=True)
    state = {"w": np.zeros(1000)}
    assert manager.save(1, state)
    state["w"][:] = 5.0  # changed while the write may still be in flight
    manager.close()
    np.testing.assert_array_equal(CheckpointManager(ckpt_dir).load(1)["w"], np.zeros(1000))


def test_async_saves_reusing_staging_buffers_keep_each_values_kind_shape_and_ties(
    ckpt_dir: Path,
) -> None:
    """Staging buffers are reused between saves only for the same kind, shape and dtype."""
    manager = CheckpointManager(ckpt_dir, async_save=True)
    shared = np.arange(4.0)
    states = [
        {"lr": 0.5, "w": np.zeros(3, np.float32), "v": shared, "tied": SameAs("v")},
        {
            "lr": np.float64(0.25),
            "w": np.ones((2, 2), np.float32),
            "v": shared + 1,
            "tied": SameAs("v"),
        },
        {"lr": 0.125, "w": np.full((2, 2), 2.0), "v": shared + 2, "tied": SameAs("v")},
    ]
    for step, state in enumerate(states, 1):
        assert manager.save(step, state, force=True)
    manager.close()
    reader = CheckpointManager(ckpt_dir)
    loaded = [reader.load(step) for step in (1, 2, 3)]
    assert [type(state["lr"]) for state in loaded] == [float, np.float64, float]
    assert [state["lr"] for state in loaded] == [0.5, 0.25, 0.125]
    for state, saved in zip(loaded, states, strict=True):
        assert state["w"].dtype == saved["w"].dtype
        np.testing.assert_array_equal(state["w"], saved["w"])
        np.testing.assert_array_equal(state["v"], saved["v"])
        np.testing.assert_array_equal(state["tied"], saved["v"])


def test_async_failure_is_raised_at_the_next_call(
    ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(expman.checkpoints._manager, "write_checkpoint", full_disk)
    manager = CheckpointManager(ckpt_dir, async_save=True)
    state = {"w": np.zeros(3)}
    assert manager.save(1, state)
    with pytest.raises(CheckpointSaveFailedError) as caught:
        manager.save(2, state, force=True)  # a save that writes waits for the one in flight
    assert str(caught.value) == (
        f"the asynchronous save of step 1 failed: could not save checkpoint step 1 in "
        f"{ckpt_dir}: no space left on the device: free some space, then save again "
        "(earlier checkpoints are intact)"
    )
    assert manager.save(3, state, force=True)
    with pytest.raises(CheckpointSaveFailedError, match=r"^the asynchronous save of step 3"):
        manager.close()
    assert files(ckpt_dir) == []


def test_async_save_does_not_wait_for_the_write_in_flight_unless_it_writes(
    ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    release = threading.Event()
    real_write = expman.checkpoints._manager.write_checkpoint

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=10)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(expman.checkpoints._manager, "write_checkpoint", slow_write)
    manager = CheckpointManager(ckpt_dir, async_save=True)
    state = {"w": np.zeros(3)}
    assert manager.save(1, state)  # in flight until released
    assert not manager.save(2, state)  # returns at once: the policy does not save step 2
    assert files(ckpt_dir) == []
    release.set()
    manager.close()
    assert [c.step for c in manager.checkpoints()] == [1, 2]


def test_a_temporary_directory_that_stayed_empty_is_removed_at_close() -> None:
    unused = CheckpointManager()
    unused.close()
    assert not unused.directory.exists()

    used = CheckpointManager()
    used.save(1, {"w": np.ones(3, np.float32)})
    used.close()
    assert sorted(p.name for p in used.directory.iterdir()) == ["checkpoint", "ckpt-000001.h5"]
    shutil.rmtree(used.directory)


def test_the_metadata_a_save_remembers_is_what_the_file_holds(ckpt_dir: Path) -> None:
    # Retention needs every checkpoint's metadata; the writer's own is not read back.
    writer = CheckpointManager(ckpt_dir, experiment="base", params={"lr": 0.1, "n": [1, 2]})
    writer.save(3, {"w": np.ones((2, 3), np.float32), "s": "text", "n": 7}, metrics={"loss": 1.5})
    remembered = writer.metadata()
    assert remembered == CheckpointManager(ckpt_dir).metadata()
    assert remembered.path == ckpt_dir / "ckpt-000003.h5"


def test_a_required_restore_from_an_empty_directory_raises_instead_of_starting_over(
    tmp_path: Path,
) -> None:
    """A mistyped checkpoint directory must not quietly train from scratch."""
    written = CheckpointManager(tmp_path / "run")
    written.save(7, estimator_state(), force=True)
    written.close()

    typo = CheckpointManager(tmp_path / "rnu")
    state = zeros_like_state(estimator_state())
    with pytest.raises(CheckpointNotFoundError) as raised:
        typo.restore_latest(into=state, required=True)
    assert str(raised.value) == (
        f"no checkpoint to restore in {tmp_path / 'rnu'} (required=True): check that this is "
        "the run's checkpoint directory, or start from scratch without required"
    )
    assert typo.restore_latest(into=state) == 0  # without required: a fresh start, as before
    typo.close()
    assert CheckpointManager(tmp_path / "run").restore(into=state, required=True) == 7


def test_a_tensor_name_with_a_newline_stays_on_its_own_line_of_the_refusal(
    ckpt_dir: Path,
) -> None:
    """A name may hold a newline: printed raw, it would forge a line of the message."""
    forged = "extra\n  w: checkpoint [9] vs model [3]"
    CheckpointManager(ckpt_dir).save(1, {"w": np.zeros(3), forged: np.zeros(2)}, force=True)
    with pytest.raises(ArchitectureMismatchError) as caught:
        CheckpointManager(ckpt_dir).restore({"w": np.ones(3)})
    assert str(caught.value).splitlines()[1:-1] == [
        "  extra\\x0a  w: checkpoint [9] vs model [3]: not in the model (checkpoint has [2] "
        "float64)",
    ]
