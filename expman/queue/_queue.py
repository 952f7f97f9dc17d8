"""Queue operations: enqueue, cancel, retry, and settling an entry from its branch.

The branch is the truth about a run: when no live process holds an entry's
claim, the entry is settled from the experiment's run records (a new run
``succeeded`` -> done, ``failed``/``refused`` -> failed, ``interrupted`` ->
interrupted); a claimed entry whose run left no record is ``lost``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from expman._errors import QueueError
from expman.experiments._workspace import Workspace
from expman.queue._store import Entry, EntryState, QueueStore

__all__ = ["cancel", "enqueue", "entries", "retry", "settle", "store_of"]

_FINAL: dict[str, EntryState] = {
    "succeeded": "done",
    "failed": "failed",
    "refused": "failed",
    "interrupted": "interrupted",
    "lost": "lost",
}


def store_of(ws: Workspace) -> QueueStore:
    return QueueStore(ws.state_dir / "queue")


def enqueue(
    ws: Workspace, names: Sequence[str], *, params: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Entry]:
    """Queue experiments (each must exist); refused for one already queued or running."""
    for name in names:
        ws.head_of(name)
    store = store_of(ws)
    added = []
    with store.locked():
        for name in names:
            old = store.get(name)
            if old is not None and old.state in ("queued", "running"):
                raise QueueError(
                    f"experiment {name} is already {old.state} in the queue: see expman queue"
                )
        seq = store.next_seq()
        for offset, name in enumerate(names):
            old = store.get(name)
            entry = Entry(
                name=name,
                state="queued",
                seq=seq + offset,
                attempt=(old.attempt + 1) if old else 1,
                queued_at=time.time(),
                params=dict((params or {}).get(name, old.params if old else {})),
            )
            added.append(store.put(entry))
    return added


def entries(ws: Workspace) -> list[Entry]:
    """Every entry in queue order, running ones whose process is gone settled first."""
    store = store_of(ws)
    found = store.all()
    if any(e.state == "running" for e in found):
        with store.locked():
            for entry in store.all():
                if entry.state == "running" and not store.is_claimed(entry.name):
                    settle(ws, store, entry)
        found = store.all()
    return found


def settle(
    ws: Workspace, store: QueueStore, entry: Entry, *, exit_code: int | None = None
) -> Entry:
    """Record how a claimed entry ended, from the branch (the caller holds the lock)."""
    runs = ws.runs(entry.name)
    new = [r for r in runs if r.number > (entry.runs_before or 0)]
    finished = time.time()
    if new:
        run = new[-1]
        state = _FINAL.get(run.status, "failed")
        return store.update(
            entry,
            state=state,
            run=run.number,
            exit_code=run.exit_code if exit_code is None else exit_code,
            finished_at=finished,
            pid=None,
        )
    if exit_code is None:
        error = "the process running it died before the run was recorded (worker lost?)"
        return store.update(entry, state="lost", error=error, finished_at=finished, pid=None)
    error = f"expman run exited {exit_code} without recording a run: see expman queue logs"
    return store.update(
        entry, state="failed", exit_code=exit_code, error=error, finished_at=finished, pid=None
    )


def cancel(ws: Workspace, name: str) -> Entry:
    """A queued entry is cancelled; a running one on this host is interrupted (Ctrl-C)."""
    store = store_of(ws)
    with store.locked():
        entry = _existing(store, name)
        if entry.state == "queued":
            return store.update(entry, state="cancelled", finished_at=time.time())
        if entry.state != "running":
            raise QueueError(f"experiment {name} is {entry.state}, not queued or running")
        if entry.host != socket.gethostname() or entry.pid is None:
            raise QueueError(
                f"experiment {name} runs on {entry.host or 'another machine'}: cancel it there"
            )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry.pid, signal.SIGINT)  # its own session: expman run and its command
        return entry


def retry(ws: Workspace, name: str) -> Entry:
    """Queue again an entry that ended (failed, lost, interrupted, cancelled or done)."""
    store = store_of(ws)
    with store.locked():
        entry = _existing(store, name)
        if entry.state in ("queued", "running"):
            raise QueueError(f"experiment {name} is already {entry.state}: nothing to retry")
    return enqueue(ws, [name])[0]


def _existing(store: QueueStore, name: str) -> Entry:
    entry = store.get(name)
    if entry is None:
        raise QueueError(
            f"experiment {name} is not in the queue: queue it with expman run {name} --queue"
        )
    return entry


def log_path(ws: Workspace, name: str) -> Path:
    """The log of an entry's latest attempt."""
    store = store_of(ws)
    entry = _existing(store, name)
    path = store.log_path(name, entry.attempt)
    if not path.exists():
        raise QueueError(f"experiment {name} has no log yet: it is {entry.state}")
    return path
