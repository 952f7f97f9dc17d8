"""A throwaway git repository with an expman.toml, for the command benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def init_repository(repo: Path, config: str) -> None:
    """``repo`` (made if missing): one commit holding ``config`` as expman.toml."""
    repo.mkdir(exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Bench")
    git(repo, "config", "user.email", "bench@example.com")
    (repo / "expman.toml").write_text(config)
    (repo / ".gitignore").write_text("/.expman/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bench")
