"""One run per experiment at a time: an flock on a lock file.

The kernel drops an flock when its process dies, however it dies, so a crashed
run never leaves an experiment locked.
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
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ExperimentLockedError(
                f"experiment {self.experiment} is already running (pid {holder}): wait for "
                "it to finish, or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

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
