"""``expman queue start``: submit the queued entries to Dask distributed, and wait.

The only module that imports Dask's client and cluster. Without a scheduler
address, a ``LocalCluster`` of ``jobs`` worker processes (one thread each)
runs here; with one, the entries go to that cluster's workers, which must see
the repository at the same path (a shared filesystem, docs/sweeps.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from expman._errors import QueueError
from expman.experiments._workspace import Workspace
from expman.queue._queue import entries, settle, store_of
from expman.queue._store import Entry
from expman.queue._worker import interrupt_runs, run_entry

__all__ = ["QueueOptions", "QueueResult", "start_queue"]

_POLL_S = 0.05
_RESCAN_S = 0.5
_STOP_WAIT_S = 60.0


@dataclass(frozen=True)
class QueueOptions:
    """How ``queue start`` runs: see ``expman queue start --help``."""

    jobs: int = 1
    scheduler: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueResult:
    finished: tuple[Entry, ...]
    interrupted: bool


def start_queue(
    ws: Workspace, options: QueueOptions, *, report: Callable[[Entry], None] = lambda e: None
) -> QueueResult:
    """Run every queued entry (and wait for running ones) until the queue is idle."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise QueueError(
            "the queue runs on Dask distributed, which is not installed: "
            "pip install 'expman[queue]'"
        ) from None
    if options.jobs < 1:
        raise QueueError(f"-j must be 1 or more, got {options.jobs}")
    entries(ws)  # settle what a dead `queue start` left running
    cluster: Any = None
    try:
        if options.scheduler:
            client = Client(options.scheduler, timeout="10s")  # type: ignore[no-untyped-call]
        else:
            cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=options.jobs,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                resources=dict(options.resources) or None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)  # type: ignore[no-untyped-call]
    except OSError as error:
        raise QueueError(
            f"cannot reach the Dask scheduler {options.scheduler}: {error}; start one "
            "(dask scheduler) or leave out --scheduler to run here"
        ) from None
    finished: list[Entry] = []
    try:
        with client:
            interrupted = _drive(ws, client, options, finished, report)
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)
    return QueueResult(tuple(finished), interrupted)


def _drive(
    ws: Workspace,
    client: Any,
    options: QueueOptions,
    finished: list[Entry],
    report: Callable[[Entry], None],
) -> bool:
    store = store_of(ws)
    session = secrets.token_hex(4)
    submitted: set[tuple[str, int]] = set()
    pending: dict[Any, tuple[str, int]] = {}
    try:
        last_scan = 0.0
        while True:
            now = time.monotonic()
            if now - last_scan >= _RESCAN_S or not pending:
                last_scan = now
                current = entries(ws)
                for entry in current:
                    key = (entry.name, entry.attempt)
                    if entry.state == "queued" and key not in submitted:
                        future = client.submit(
                            run_entry,
                            str(ws.root),
                            entry.name,
                            entry.attempt,
                            key=f"expman-{entry.name}-{entry.attempt}-{session}",
                            pure=False,
                            resources=dict(options.resources) or None,
                        )
                        submitted.add(key)
                        pending[future] = key
                if not pending and not any(e.state == "running" for e in current):
                    return False
            for future in [f for f in pending if f.done()]:
                name, attempt = pending.pop(future)
                outcome = _outcome(ws, future, name, attempt)
                if outcome is not None:
                    finished.append(outcome)
                    report(outcome)
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        _stop(ws, client, store, pending)
        for name, _ in pending.values():
            stopped = store.get(name)
            if stopped is not None and stopped.state not in ("queued", "running"):
                finished.append(stopped)
                report(stopped)
        return True


def _outcome(ws: Workspace, future: Any, name: str, attempt: int) -> Entry | None:
    """The entry as its task left it; a task that failed before running marks it failed."""
    store = store_of(ws)
    try:
        future.result()
    except Exception as error:
        with store.locked():
            entry = store.get(name)
            if entry is None or entry.attempt != attempt:
                return None
            if entry.state == "queued":
                return store.update(entry, state="failed", error=f"{type(error).__name__}: {error}")
            if entry.state == "running" and not store.is_claimed(name):
                return settle(ws, store, entry)  # the worker died: KilledWorker
            return None
    entry = store.get(name)
    if entry is None or entry.attempt != attempt or entry.state in ("queued", "running"):
        return None  # run by another `queue start`, or retried meanwhile
    return entry


def _stop(ws: Workspace, client: Any, store: Any, pending: Mapping[Any, tuple[str, int]]) -> None:
    """Ctrl-C: interrupt the runs, wait for them to record it, leave the rest queued."""
    with contextlib.suppress(Exception):
        client.run(interrupt_runs)
    host = socket.gethostname()
    ours = {name for name, _ in pending.values()}
    for entry in store.all():  # runs whose worker died with the Ctrl-C: signal them here
        if entry.name in ours and entry.state == "running" and entry.host == host and entry.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.pid, signal.SIGINT)
    deadline = time.monotonic() + _STOP_WAIT_S
    while time.monotonic() < deadline:
        running = [e for e in store.all() if e.name in ours and e.state == "running"]
        if all(not store.is_claimed(e.name) for e in running):
            break
        time.sleep(_POLL_S)
    with contextlib.suppress(Exception):
        client.cancel(list(pending))
    entries(ws)  # settle runs whose task could not
