"""Killing a writer with SIGKILL at any point never corrupts or loses a checkpoint.

Each trial forks a child that resumes from the directory and saves further
steps; the child is killed at an exact durability phase (through
``expman.checkpoints._durable.phase_hook``) or at a random instant. After every kill the
parent checks that the latest checkpoint restores bit-exactly to the state of
either the last step the child reported as saved or the one it was writing,
that no reported step newer than what retention may delete was lost, and that
every committed file is fully valid.
"""

from __future__ import annotations

import os
import random
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import expman.checkpoints._durable
from expman import CheckpointIndexWarning, CheckpointManager, CheckpointPolicy

POLICY = CheckpointPolicy(save_every_steps=1, keep_max=2, save_every_secs=None)
SAVES_PER_CHILD = 3


def state_at(step: int) -> dict[str, Any]:
    """The exact state a writer saves at ``step``: every value derives from it."""
    rng = np.random.default_rng(step)
    return {
        "dnn/hiddenlayer_0/kernel": rng.standard_normal((64, 256)).astype(np.float32),
        "dnn/hiddenlayer_0/bias": rng.standard_normal(256),
        "dnn/hiddenlayer_0/bias/t_0/Adagrad": rng.standard_normal(256).astype(np.float16),
        "dnn/logits/kernel": rng.standard_normal((256, 3)),
        "global_step": step,
    }


def run_child(directory: Path, hook: Callable[[str], None] | None, saves: int, report: int) -> None:
    """In the forked child: resume, then save ``saves`` more steps."""
    expman.checkpoints._durable.phase_hook = hook
    warnings.simplefilter("ignore")
    manager = CheckpointManager(directory, policy=POLICY)
    state = state_at(0)
    start = manager.restore_latest(into=state)
    for step in range(start + 1, start + 1 + saves):
        manager.save(step, state_at(step))
        os.write(report, f"{step}\n".encode())  # reported as saved
    manager.close()


def fork(
    directory: Path, hook: Callable[[str], None] | None, saves: int = SAVES_PER_CHILD
) -> tuple[int, int]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        try:
            run_child(directory, hook, saves, write)
        finally:
            os._exit(0)
    os.close(write)
    return pid, read


def reported(read: int) -> list[int]:
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    return [int(line) for line in b"".join(chunks).decode().split()]


def kill_at(phase: str, occurrence: int) -> Callable[[str], None]:
    seen = {"count": 0}

    def hook(name: str) -> None:
        if name == phase:
            seen["count"] += 1
            if seen["count"] == occurrence:
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def check_directory(directory: Path, last_reported: int) -> int:
    """Assert what a user relies on after a crash; return the latest step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointIndexWarning)  # a crash may leave it stale
        manager = CheckpointManager(directory, policy=POLICY)
        target = state_at(0)
        latest = manager.restore_latest(into=target)
        infos = manager.checkpoints()
    assert latest in (last_reported, last_reported + 1), (latest, last_reported)
    expected = state_at(latest) if latest else state_at(0)
    for name, value in expected.items():
        assert np.asarray(target[name]).tobytes() == np.asarray(value).tobytes(), name
    # No committed file is damaged, and retention kept what it promised.
    assert all(info.valid for info in infos), [i.error for i in infos if not i.valid]
    steps = [info.step for info in infos]
    if last_reported:
        assert last_reported in steps or last_reported + 1 in steps
    # The new manager cleaned up what the dead writer left behind.
    assert not [p for p in directory.iterdir() if ".tmp-" in p.name]
    return latest


PHASES = ["write", "fsync", "rename", "fsync-directory", "index", "retention"]
# Occurrences across three saves: 5 tensor writes per save; fsync, rename and
# fsync-directory twice per save (checkpoint, then index); one index per save;
# retention once a save from the third on.
KILL_POINTS = [
    *(("write", n) for n in (1, 2, 3, 5, 6, 8, 11, 13, 15)),
    *(("fsync", n) for n in range(1, 7)),
    *(("rename", n) for n in range(1, 7)),
    *(("fsync-directory", n) for n in range(1, 7)),
    *(("index", n) for n in range(1, 4)),
    *(("retention", n) for n in range(1, 3)),
]


def test_sigkill_at_every_durability_phase(tmp_path: Path) -> None:
    directory = tmp_path / "model_dir"
    kills = 0
    last_reported = 0
    for _ in range(2):  # twice over, so later rounds also delete old checkpoints
        for phase, occurrence in KILL_POINTS:
            pid, read = fork(directory, kill_at(phase, occurrence))
            _, status = os.waitpid(pid, 0)
            steps = reported(read)
            if os.WIFSIGNALED(status):
                assert os.WTERMSIG(status) == signal.SIGKILL
                kills += 1
            else:
                assert os.WEXITSTATUS(status) == 0
            last_reported = max([last_reported, *steps])
            last_reported = check_directory(directory, last_reported)
    assert kills >= 50, kills


def test_sigkill_at_random_instants(tmp_path: Path) -> None:
    directory = tmp_path / "model_dir"
    chooser = random.Random(1234)
    last_reported = 0
    kills = 0
    for _ in range(25):
        pid, read = fork(directory, None, saves=10_000)
        time.sleep(chooser.uniform(0.05, 0.3))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        kills += os.WIFSIGNALED(status)
        last_reported = max([last_reported, *reported(read)])
        last_reported = check_directory(directory, last_reported)
    assert kills == 25
