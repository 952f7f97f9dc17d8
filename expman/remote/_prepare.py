"""Before ``expman run``: the latest checkpoint a record names must be on this machine.

An experiment pulled from another machine has records naming checkpoints that
only the store holds. Resuming without them would silently start from an
older step (or from scratch), so the run first fetches the latest one from
the remote, verified as ``expman pull`` verifies it, or says how to get it.
Reading the records costs one git process; fsspec is imported only to fetch.
"""

from __future__ import annotations

from expman._errors import CheckpointNotFoundError
from expman.checkpoints._catalog import CheckpointDirectory
from expman.experiments._workspace import Workspace
from expman.remote._config import read_remotes
from expman.remote._files import latest_recorded, manifest_cache, recorded_checkpoints
from expman.remote._progress import Progress

__all__ = ["fetch_latest_checkpoint_for_run"]


def fetch_latest_checkpoint_for_run(ws: Workspace, name: str, *, progress: Progress) -> int | None:
    """Fetch the experiment's latest recorded checkpoint if it is missing here.

    Returns the step fetched, or None when nothing was needed.
    """
    head = ws.head_of(name)
    latest = latest_recorded(recorded_checkpoints(ws, name, head))
    if latest is None:
        return None
    directory = ws.checkpoint_dir(name)
    steps = CheckpointDirectory(directory).steps() if directory.is_dir() else {}
    if steps and max(steps) >= latest.step:
        return None
    remotes = read_remotes(ws.root)
    if len(remotes) != 1 and "origin" not in {r.name for r in remotes}:
        raise CheckpointNotFoundError(
            f"the latest checkpoint of {name} ({latest.file}, step {latest.step}, from run "
            f"{latest.run}) is not on this machine: fetch it with expman pull {name} "
            "--checkpoints latest, or start over with expman run "
            f"{name} --fresh"
        )
    from expman.remote._config import choose_remote
    from expman.remote._pull import fetch_checkpoints
    from expman.remote._store import ObjectStore

    store = ObjectStore(choose_remote(ws.root, None), cache=manifest_cache(ws))
    fetch_checkpoints(ws, store, {name: [latest]}, progress)
    return latest.step
