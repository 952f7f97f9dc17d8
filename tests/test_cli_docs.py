"""docs/cli.md's exit-code table is the code's, and each example returns its code."""

from __future__ import annotations

import os
import pty
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from expman.cli._exit import EXIT_CODES
from expman.experiments._supervisor import FORWARDED_SIGNALS
from tests.cli import EXPMAN, expman
from tests.conftest import git, make_repository, run_expman

DOC = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
ROWS = {
    int(cells[0]): cells[1:]
    for line in DOC.splitlines()
    if line.startswith("| ") and line[2].isdigit()
    for cells in [[c.strip() for c in line.strip("|").split("|")]]
}
# expman run after a signal it passed on to its command (or that killed the command).
SIGNAL_CODES = {128 + signum for signum in FORWARDED_SIGNALS}


def test_every_exit_code_is_documented_with_its_meaning() -> None:
    for _, code, meaning in EXIT_CODES:
        assert code in ROWS, code
        assert meaning.split(" (")[0].split(":")[0] in ROWS[code][0], (code, meaning)
    assert set(ROWS) == {0} | SIGNAL_CODES | {code for _, code, _ in EXIT_CODES}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs' examples' workspace: base has run; wide, from base, has a bigger model."""
    repo = make_repository(tmp_path_factory.mktemp("docs") / "repo")
    assert run_expman(repo, "new", "base").returncode == 0
    assert run_expman(repo, "run", "base").returncode == 0
    new = run_expman(repo, "new", "wide", "--from", "base", "--set", "model.hidden_units=[20]")
    assert new.returncode == 0
    return repo


def _truncate_latest_checkpoint(repo: Path) -> None:
    latest = sorted((repo / ".expman" / "checkpoints" / "base").glob("ckpt-*.h5"))[-1]
    with open(latest, "r+b") as file:
        file.truncate(latest.stat().st_size // 2)


def _store_without_git_remote(repo: Path) -> None:
    assert run_expman(repo, "remote", "add", "origin", str(repo.parent / "store")).returncode == 0


def _pushed_then_manifest_deleted(repo: Path) -> None:
    bare = repo.parent / "remote.git"
    git(repo.parent, "init", "-q", "--bare", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    _store_without_git_remote(repo)
    assert run_expman(repo, "push").returncode == 0
    shutil.rmtree(repo.parent / "store" / "manifests" / "base")


# What the example's words after the command ("HEAD detached", ...) ask for.
SETUPS: dict[int, Callable[[Path], None]] = {
    4: lambda repo: git(repo, "checkout", "-q", "--detach"),
    8: _truncate_latest_checkpoint,
    14: _pushed_then_manifest_deleted,
    15: _store_without_git_remote,
}


def _answering_no(repo: Path, args: list[str]) -> int:
    """Run expman on a terminal and answer its question with "n"."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(EXPMAN), *args], cwd=repo, stdin=terminal, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    os.write(controller, b"n\n")
    output = b""
    while True:
        try:
            chunk = os.read(controller, 1024)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    code = process.wait(timeout=60)
    assert b"expman: error: aborted: nothing was changed" in output, output
    return code


@pytest.mark.parametrize("code", sorted(ROWS))
def test_each_documented_example_returns_its_code(seeded: Path, tmp_path: Path, code: int) -> None:
    example = ROWS[code][1]
    command, _, condition = example.partition("`, ")
    args = shlex.split(command.strip("`"))
    assert args[0] == "expman", example
    repo = tmp_path / "repo"
    shutil.copytree(seeded, repo, symlinks=True)
    if code in SETUPS:
        SETUPS[code](repo)
    if code == 1:
        assert condition == "answered `n`"
        assert _answering_no(repo, args[1:]) == 1
        assert git(repo, "for-each-ref", "refs/heads/exp/base") != ""
        return
    if code == 7:
        from expman.experiments._workspace import Workspace

        with Workspace.open(repo).lock("base"):
            result = expman(repo, *args[1:])
    else:
        result = expman(repo, *args[1:])
    assert result.returncode == code, (example, result.stderr)
    if code not in (0, 3, *SIGNAL_CODES):  # a run's own outcome, reported by the run
        assert result.stderr.splitlines()[-1].startswith("expman: error: "), result.stderr
