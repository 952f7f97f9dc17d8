"""Progress of transfers: the library reports, the command line draws."""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """Receives the progress of uploads, downloads and git transfers; reports nothing.

    The command line subclasses it to draw a bar (bytes, rate, ETA) on a terminal.
    """

    def start(self, label: str, total_bytes: int) -> None:
        """A transfer of ``total_bytes`` in all begins."""

    def advance(self, done_bytes: int) -> None:
        """``done_bytes`` more bytes went through (called from transfer threads too)."""

    def finish(self) -> None:
        """The transfer ended (or failed)."""

    def git(self, line: str) -> None:
        """A line of git's own progress (counting, compressing, writing objects)."""
