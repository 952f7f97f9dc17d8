"""Shared fixtures: sample states and real small filesystems."""

from __future__ import annotations

import itertools
import os
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
