"""What a Dask worker executes for one queue entry: ``expman run NAME``, as a black box.

The task takes the entry's claim (``claims/NAME.lock``) and, under the queue
lock, moves it from queued to running; a task whose entry is not queued at
that attempt does nothing, so an entry never runs twice, whichever
``queue start`` or worker submitted it. ``expman run`` runs in a subprocess
of its own session, inheriting the claim: if the worker dies, the claim lives
as long as the run does. The run itself (its lock, worktree and record) is
``expman run``'s job. Arguments and results are plain strings and dicts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from expman._errors import QueueError, RepositoryError
from expman.experiments._workspace import Workspace
from expman.queue._queue import settle, store_of

__all__ = ["interrupt_runs", "run_entry"]

# `python -c` rather than the console script: the worker's interpreter, whatever its PATH.
_MAIN = "import sys; sys.argv[0] = 'expman'; from expman.cli import main; main()"
_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:  # called outside a Dask worker
        return f"{socket.gethostname()}:{os.getpid()}"


def run_entry(root: str, name: str, attempt: int) -> dict[str, Any]:
    """Run one entry if it is still queued at ``attempt``; return the entry as it ended."""
    try:
        ws = Workspace.open(root)
    except RepositoryError as error:
        raise QueueError(
            f"worker {socket.gethostname()} cannot open the workspace {root} ({error}): the "
            "queue needs the repository on a filesystem every worker shares (docs/sweeps.md)"
        ) from None
    store = store_of(ws)
    with store.claim_lock(name) as claim:
        if claim is None:
            return {"name": name, "skipped": "running elsewhere"}
        with store.locked():
            entry = store.get(name)
            if entry is None or entry.attempt != attempt or entry.state != "queued":
                if entry is not None and entry.state == "running":
                    entry = settle(ws, store, entry)  # its process died: the claim was free
                return {"name": name, "skipped": entry.state if entry else "not queued"}
            entry = store.update(
                entry,
                state="running",
                started_at=time.time(),
                worker=_worker_name(),
                host=socket.gethostname(),
                runs_before=ws.summary(name).runs,
            )
        log = store.log_path(name, attempt)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-c", _MAIN, "run", name],
                cwd=ws.root,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(claim,),
                start_new_session=True,
            )
        _RUNNING[process.pid] = process
        try:
            with store.locked():
                store.update(entry, pid=process.pid)
            code = process.wait()
        finally:
            _RUNNING.pop(process.pid, None)
        with store.locked():
            current = store.get(name)
            assert current is not None
            return asdict(settle(ws, store, current, exit_code=code))


def interrupt_runs() -> int:
    """Ctrl-C the runs this process started (``client.run`` calls it on every worker)."""
    for pid, process in list(_RUNNING.items()):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGINT)
    return len(_RUNNING)
