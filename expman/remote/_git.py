"""Branches to and from a git remote, with GitPython (the only module that imports it).

expman's own plumbing (refs, trees, commits) stays in ``experiments/_gitrepo``;
this module only talks to remotes: ``fetch`` and ``push`` with git's progress,
and ancestry checks to tell a fast-forward from a divergence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import git

from expman._errors import RemoteError
from expman.remote._progress import Progress

__all__ = ["GitRemote"]

# GitPython logs refused pushes on its own; expman reports them in one line instead.
logging.getLogger(git.__name__).addHandler(logging.NullHandler())
logging.getLogger(git.__name__).propagate = False

_REFUSED = git.PushInfo.REJECTED | git.PushInfo.REMOTE_REJECTED | git.PushInfo.ERROR


class _GitProgress(git.RemoteProgress):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.progress.git(self._cur_line or "")


class GitRemote:
    """A git remote of the repository at ``root`` (``origin`` by default)."""

    def __init__(self, root: Path, name: str) -> None:
        self.repo = git.Repo(root)
        self.repo.git.update_environment(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        self.name = name
        if name not in {remote.name for remote in self.repo.remotes}:
            raise RemoteError(
                f"the repository has no git remote named {name!r}: add it with git remote add "
                f"{name} URL, or name another one in [remote.NAME] git_remote = ... of expman.toml"
            )
        self.remote = self.repo.remote(name)

    def fetch(self, prefix: str, progress: Progress) -> None:
        """Every ``refs/heads/PREFIX*`` into ``refs/remotes/NAME/PREFIX*``."""
        refspec = f"+refs/heads/{prefix}*:refs/remotes/{self.name}/{prefix}*"
        try:
            self.remote.fetch(refspec, progress=_GitProgress(progress))
        except git.GitCommandError as error:
            raise RemoteError(
                f"git fetch from {self.name} failed ({_stderr(error)}): check the remote "
                "with git remote -v and your access to it"
            ) from error

    def push(self, refs: Sequence[str], progress: Progress) -> list[str]:
        """Push each ref to the same name; return those the remote refused (not fast-forward)."""
        if not refs:
            return []
        try:
            infos = self.remote.push(
                [f"{ref}:{ref}" for ref in refs], progress=_GitProgress(progress)
            )
        except git.GitCommandError as error:
            raise RemoteError(
                f"git push to {self.name} failed ({_stderr(error)}): check the remote with "
                "git remote -v and your access to it"
            ) from error
        refused = [info.remote_ref_string for info in infos if info.flags & _REFUSED]
        if not infos and infos.error is not None:
            raise RemoteError(
                f"git push to {self.name} failed ({_stderr(infos.error)}): check the remote with "
                "git remote -v and your access to it"
            )
        return refused

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self.repo.is_ancestor(self.repo.commit(ancestor), self.repo.commit(descendant))


def _stderr(error: Exception) -> str:
    text = getattr(error, "stderr", "") or str(error)
    lines = [line.strip() for line in str(text).strip().strip("'").splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
