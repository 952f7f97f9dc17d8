"""The queue's durable state: one JSON file per entry under ``.expman/queue/``, under a lock.

``.expman/queue/lock`` is flocked around every read-modify-write, and each
entry is replaced atomically (temporary file, fsync, rename), so a process
killed at any instant leaves every entry either as it was or as it became.
``claims/NAME.lock`` is flocked by whichever process runs the entry (and by
its ``expman run``, which inherits it): while it is held, the run is alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from expman.checkpoints._durable import fsync_directory

__all__ = ["STATES", "Entry", "EntryState", "QueueStore"]

EntryState = Literal["queued", "running", "done", "failed", "interrupted", "lost", "cancelled"]
STATES: tuple[EntryState, ...] = (
    "queued",
    "running",
    "done",
    "failed",
    "interrupted",
    "lost",
    "cancelled",
)


@dataclass(frozen=True)
class Entry:
    """One experiment in the queue; ``attempt`` grows with each retry."""

    name: str
    state: EntryState
    seq: int
    attempt: int
    queued_at: float
    params: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    host: str | None = None
    pid: int | None = None
    runs_before: int | None = None
    run: int | None = None
    exit_code: int | None = None
    error: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at


class QueueStore:
    """The files of the queue under ``directory`` (``.expman/queue``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.entries_dir = directory / "entries"
        self.claims_dir = directory / "claims"
        self.logs_dir = directory / "logs"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the queue's lock: one reader-modifier-writer at a time, across processes."""
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def path(self, name: str) -> Path:
        return self.entries_dir / f"{name}.json"

    def log_path(self, name: str, attempt: int) -> Path:
        return self.logs_dir / name / f"{attempt:03d}.log"

    def get(self, name: str) -> Entry | None:
        try:
            data = json.loads(self.path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return Entry(**data)

    def all(self) -> list[Entry]:
        """Every entry, in queue order."""
        if not self.entries_dir.is_dir():
            return []
        found = [self.get(p.stem) for p in self.entries_dir.glob("*.json")]
        return sorted((e for e in found if e is not None), key=lambda e: e.seq)

    def put(self, entry: Entry) -> Entry:
        """Write ``entry`` durably (the caller holds the lock)."""
        target = self.path(entry.name)
        temporary = target.with_suffix(f".tmp-{os.getpid()}")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(asdict(entry), handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        fsync_directory(self.entries_dir)
        return entry

    def update(self, entry: Entry, **changes: Any) -> Entry:
        return self.put(replace(entry, **changes))

    def next_seq(self) -> int:
        return max((e.seq for e in self.all()), default=0) + 1

    @contextlib.contextmanager
    def claim_lock(self, name: str) -> Iterator[int | None]:
        """Hold ``claims/NAME.lock`` (its fd), or yield None if a live process holds it."""
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.claims_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield fd
        finally:
            os.close(fd)

    def is_claimed(self, name: str) -> bool:
        """Whether a live process (a worker's task or its ``expman run``) holds the claim."""
        with self.claim_lock(name) as fd:
            return fd is None
