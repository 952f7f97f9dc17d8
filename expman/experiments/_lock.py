"""One run per experiment at a time: an flock on a lock file.

The kernel drops an flock when the last descriptor of its open file is closed,
however its processes die, so a crashed run never leaves an experiment locked.
``expman run`` passes the locked descriptor to its command, so the lock lives
as long as expman *or* the command (and what the command forks) lives: a
second run cannot start beside a command that outlived a killed expman.
The file names the holders: expman's pid, then the command's.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from expman._errors import ExperimentLockedError

__all__ = ["ExperimentLock"]


class ExperimentLock:
    def __init__(self, path: Path, experiment: str) -> None:
        self.path = path
        self.experiment = experiment
        self._fd: int | None = None

    def acquire(self) -> ExperimentLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = os.read(fd, 64).decode(errors="replace").split()
            os.close(fd)
            raise ExperimentLockedError(self._running_message(holders)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    @property
    def fd(self) -> int:
        """The locked descriptor, for a child process to inherit (and so hold the lock)."""
        assert self._fd is not None, "the lock is not held"
        return self._fd

    def note_command(self, pid: int) -> None:
        """Name the run's command in the lock file, after expman's own pid."""
        os.pwrite(self.fd, f"{os.getpid()}\n{pid}\n".encode(), 0)

    def _running_message(self, holders: list[str]) -> str:
        if len(holders) == 2 and not _alive(holders[0]) and _alive(holders[1]):
            return (
                f"experiment {self.experiment} is still running: its command (pid "
                f"{holders[1]}) outlived expman (pid {holders[0]}); wait for it to finish, "
                f"or stop it (kill {holders[1]})"
            )
        holder = holders[0] if holders else "another process"
        return (
            f"experiment {self.experiment} is already running (pid {holder}): wait for it "
            "to finish, or stop it first"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def is_held(self) -> bool:
        """Whether a live process holds the lock (checked without taking it for long)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> ExperimentLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
