"""Run the real ``expman`` console script, as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXPMAN = Path(sys.executable).parent / "expman"


def expman(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EXPMAN_")}
    return subprocess.run(
        [str(EXPMAN), *args],
        cwd=cwd,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def checkout_state(repo: Path) -> tuple[str, str, str, str]:
    """HEAD, the branch, the index and the working tree, as git sees them."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout

    return (
        git("rev-parse", "HEAD"),
        git("symbolic-ref", "HEAD"),
        git("ls-files", "--stage"),
        git("status", "--porcelain", "--untracked-files=all"),
    )
