"""Hostile checkpoints under the CLI: documented exit codes, no traceback, no hang, no leak."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from tests.cli import expman
from tests.conftest import git
from tests.hostile_checkpoints import SECRET, external_scalar


def checkpoints_of(workspace: Path, name: str) -> Path:
    return workspace / ".expman" / "checkpoints" / name


def test_a_hostile_latest_checkpoint_exits_8_and_leaks_nothing(
    workspace: Path, tmp_path: Path
) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    latest = checkpoints_of(workspace, "base") / "ckpt-000020.h5"
    token = tmp_path / "token.txt"
    token.write_text(SECRET)
    with h5py.File(latest, "r+") as f:
        external_scalar(f, "meta/metrics", token, len(SECRET))

    result = expman(workspace, "run", "base")
    message = (
        f"{latest} breaks the checkpoint format ('/meta/metrics' has external storage): "
        "restore another step, or move the file away"
    )
    assert result.returncode == 8, result.stderr
    assert "Traceback" not in result.stderr
    assert f"expman: error: {message}\n" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("expman: run 2 of base failed (exit 8)")
    assert "Exit-Code: 8" in git(workspace, "log", "-1", "--format=%(trailers)", "exp/base")
    assert "s3cr3t" not in git(workspace, "log", "-p", "exp/base")

    shown = expman(workspace, "show", "base", "--json")
    assert shown.returncode == 0, shown.stderr
    assert message in shown.stdout
    assert "s3cr3t" not in shown.stdout + shown.stderr


def test_a_fifo_named_like_a_checkpoint_hangs_nothing(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    fifo = checkpoints_of(workspace, "base") / "ckpt-000030.h5"
    os.mkfifo(fifo)
    warning = f"skipped {fifo}: it is not a regular file; move it away"

    shown = expman(workspace, "show", "base")  # tests.cli times out after 120 s
    assert shown.returncode == 0, shown.stderr
    assert warning in shown.stderr
    run = expman(workspace, "run", "base", "--set", "steps=5")
    assert run.returncode == 0, run.stderr
    assert "starting at step 20" in run.stdout
    assert warning in run.stderr
