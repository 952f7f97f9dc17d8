"""Small helpers shared by the benchmarks: timing and reporting."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def settled(work: Callable[[], object]) -> float:
    """Time ``work`` after the disk has written back everything pending."""
    os.sync()
    return timed(work)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
