"""A background writer: one save in flight at a time, errors kept for the caller."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs one job at a time on a worker thread.

    ``submit`` waits for the job in flight before starting the next, so at most
    one is in flight. A job's exception is kept until :meth:`take_error`. The
    thread is not a daemon: the interpreter waits for a save in flight at exit.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: tuple[str, BaseException] | None = None

    def submit(self, label: str, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(
            target=self._run, args=(label, job), name="expman-checkpoint-writer"
        )
        self._thread.start()

    def _run(self, label: str, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:  # kept and raised on the caller's thread
            self._error = (label, error)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take_error(self) -> tuple[str, BaseException] | None:
        error, self._error = self._error, None
        return error
