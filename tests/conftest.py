"""Shared fixtures: sample states and real small filesystems."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def estimator_state(hidden_units: tuple[int, ...] = (10, 10), seed: int = 0) -> dict[str, Any]:
    """The variables of the Estimator guide's DNNClassifier, with Adagrad slots."""
    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {}
    sizes = (4, *hidden_units)
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        prefix = f"dnn/hiddenlayer_{layer}"
        state[f"{prefix}/kernel"] = rng.standard_normal((fan_in, fan_out)).astype(np.float32)
        state[f"{prefix}/bias"] = rng.standard_normal(fan_out).astype(np.float32)
        state[f"{prefix}/kernel/t_0/Adagrad"] = np.full((fan_in, fan_out), 0.1, np.float32)
        state[f"{prefix}/bias/t_0/Adagrad"] = np.full(fan_out, 0.1, np.float32)
    state["dnn/logits/kernel"] = rng.standard_normal((sizes[-1], 3)).astype(np.float32)
    state["dnn/logits/bias"] = rng.standard_normal(3).astype(np.float32)
    state["global_step"] = np.int64(0)
    return state


def zeros_like_state(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: np.zeros_like(v) if isinstance(v, np.ndarray | np.generic) else v
        for k, v in state.items()
    }


def require_tool(*names: str, install: str) -> str:
    """The path of the first of ``names`` on PATH; outside CI, skip when none is.

    CI installs every tool (.ci/run), so there a missing one fails the test.
    """
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    message = f"{names[0]} is not installed: {install} (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    return tmp_path / "model_dir"


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run as root to mount a small tmpfs for disk-full tests")
        pytest.skip("mounting a tmpfs needs root (CI runs these tests)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), to fill up or make read-only."""
    mount = tmp_path / "small_fs"
    _mount_tmpfs(mount, "2m")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount_read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


# -- git workspaces -------------------------------------------------------------

TRAIN_SCRIPT = '''\
"""A tiny training script driven by expman.toml's [params]."""
import os
import sys
import time

import numpy as np

import expman

params = expman.params()
hidden = params["model"]["hidden_units"]
state = {
    "dnn/hiddenlayer_0/kernel": np.zeros((4, hidden[0]), np.float32),
    "dnn/hiddenlayer_0/bias": np.zeros(hidden[0], np.float32),
    "dnn/logits/kernel": np.zeros((hidden[-1], 3), np.float32),
    "global_step": 0,
}
ckpts = expman.CheckpointManager()
start = ckpts.restore_latest(into=state)
print(f"starting at step {start}", flush=True)
if params.get("sleep"):
    print("sleeping", flush=True)
    time.sleep(float(params["sleep"]))
for step in range(start, start + params["steps"]):
    state["dnn/hiddenlayer_0/kernel"] += 1.0
    state["global_step"] = step + 1
    loss = 1.0 / (step + 1)
    expman.log_metrics(step + 1, loss=loss, accuracy=1.0 - loss)
    ckpts.save(step + 1, state, metrics={"loss": loss})
ckpts.close()
print(f"finished at step {state['global_step']}", flush=True)
sys.exit(int(params.get("exit_code", 0)))
'''

CONFIG = """\
# expman configuration for the tests
[run]
command = "python train.py"

[params]
steps = 20
exit_code = 0

[params.model]
hidden_units = [10, 10]

[checkpoints]
save_every_secs = 600
keep_max = 5

[experiments]
branch_prefix = "exp/"
key_metric = "loss"
"""


def run_expman(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from tests.cli import expman

    return expman(cwd, *args)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def make_repository(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Ada Lovelace")
    git(path, "config", "user.email", "ada@example.com")
    (path / "train.py").write_text(TRAIN_SCRIPT)
    (path / "expman.toml").write_text(CONFIG)
    (path / ".gitignore").write_text("/.expman/\n*.log\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "training script")
    return path


@pytest.fixture(scope="session")
def repository_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("template") / "repo")


@pytest.fixture
def workspace(repository_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of a git repository with train.py and expman.toml committed."""
    import shutil

    target = tmp_path / "work"
    shutil.copytree(repository_template, target, symlinks=True)
    return target


@pytest.fixture
def two_variants(workspace: Path) -> Path:
    """base (run twice) and wide (hidden_units 20, created from base, run once)."""
    assert run_expman(workspace, "new", "base").returncode == 0
    assert run_expman(workspace, "run", "base").returncode == 0
    assert run_expman(workspace, "run", "base", "--set", "steps=10").returncode == 0
    new = run_expman(
        workspace, "new", "wide", "--from", "base", "--set", "model.hidden_units=[20,20]"
    )
    assert new.returncode == 0
    (workspace / "wide.txt").write_text("x")
    assert run_expman(workspace, "run", "wide", "--fresh").returncode == 0
    return workspace
