"""An experiment's files on this machine, by the paths a manifest names them with.

``checkpoints/ckpt-000200.h5`` and the rest of ``.expman/checkpoints/NAME/``
(the event log, TensorBoard event files), ``runs/001/output.log`` and the
rest of ``.expman/runs/NAME/``. Checkpoints are shared only where a run record
on the branch names them: their digests come from the records (computed when
the run was recorded, never again), so a pulled one is checked against them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from expman._digest import digest_from_fields, file_digest
from expman._errors import RemoteIntegrityError
from expman.checkpoints._catalog import INDEX_NAME
from expman.experiments._records import RECORDS_DIR, record_directory
from expman.experiments._workspace import Workspace
from expman.remote._manifest import FileEntry
from expman.remote._pushed import PushMemory

__all__ = [
    "RecordedCheckpoint",
    "local_files",
    "local_path",
    "manifest_cache",
    "recorded_checkpoints",
]

CHECKPOINTS = "checkpoints/"
RUNS = "runs/"
_CHECKPOINT = re.compile(r"^ckpt-(\d+)\.h5$")


@dataclass(frozen=True)
class RecordedCheckpoint:
    """A checkpoint as the run records on the branch name it."""

    step: int
    file: str
    entry: FileEntry
    run: int


def recorded_checkpoints(ws: Workspace, name: str, head: str) -> list[RecordedCheckpoint]:
    """Every checkpoint the experiment's run records name, latest record first wins."""
    runs = sorted(
        int(entry) for entry in ws.repo.list_tree(head, f"{RECORDS_DIR}/{name}") if entry.isdigit()
    )
    paths = [f"{record_directory(name, number)}/checkpoints.json" for number in runs]
    contents = ws.repo.read_files(head, paths) if paths else {}
    found: dict[str, RecordedCheckpoint] = {}
    for number, path in zip(runs, paths, strict=True):
        content = contents[path]
        try:
            for item in json.loads(content) if content else []:
                entry = FileEntry(digest_from_fields(item), int(item["size"]))
                if not _CHECKPOINT.fullmatch(str(item["file"])):
                    raise ValueError(f"{str(item['file'])[:80]!r} is not a checkpoint's name")
                checkpoint = RecordedCheckpoint(int(item["step"]), str(item["file"]), entry, number)
                found[checkpoint.file] = checkpoint
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise RemoteIntegrityError(
                f"the run record {path} on {name}'s branch is damaged ({error}): its "
                "checkpoints cannot be shared or checked; fix or revert that commit"
            ) from error
    return sorted(found.values(), key=lambda c: c.step)


def latest_recorded(checkpoints: list[RecordedCheckpoint]) -> RecordedCheckpoint | None:
    """The newest checkpoint of the newest run that kept any."""
    if not checkpoints:
        return None
    last_run = max(c.run for c in checkpoints)
    return max((c for c in checkpoints if c.run == last_run), key=lambda c: c.step)


def local_files(
    ws: Workspace, name: str, recorded: Mapping[str, FileEntry], memory: PushMemory | None = None
) -> dict[str, tuple[Path, FileEntry]]:
    """The files to share, by manifest path: recorded checkpoints, logs, event files.

    A checkpoint's digest comes from its record; a log's is computed, or taken
    from ``memory`` when its size and modification time are those it was hashed at.
    """
    files: dict[str, tuple[Path, FileEntry]] = {}
    for prefix, directory in ((CHECKPOINTS, ws.checkpoint_dir(name)), (RUNS, ws.runs_dir(name))):
        for path in _regular_files(directory):
            relative = path.relative_to(directory).as_posix()
            if prefix == CHECKPOINTS and "/" not in relative:
                if relative == INDEX_NAME or relative.endswith(".pin"):
                    continue  # rebuilt by whoever pulls; pins are a machine's own choice
                if _CHECKPOINT.match(relative):
                    entry = recorded.get(relative)
                    if entry is not None and path.stat().st_size == entry.size:
                        files[prefix + relative] = (path, entry)
                    continue  # a checkpoint no record names yet is not shared
            stat = path.stat()
            digest = memory.digest(path, stat.st_size, stat.st_mtime_ns) if memory else None
            if digest is None:
                digest = file_digest(path)
                if memory:
                    memory.remember_digest(path, stat.st_size, stat.st_mtime_ns, digest)
            files[prefix + relative] = (path, FileEntry(digest, stat.st_size))
    return files


def local_path(ws: Workspace, name: str, manifest_path: str) -> Path:
    """Where a file named in a (stranger's) manifest goes; refuses anything that could escape."""
    parts = manifest_path.split("/")
    if len(parts) < 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise RemoteIntegrityError(
            f"the manifest of {name} names a file {manifest_path!r} outside the experiment's "
            "directories: refusing it; push the experiment again from a trusted machine"
        )
    if parts[0] + "/" == CHECKPOINTS:
        return ws.checkpoint_dir(name).joinpath(*parts[1:])
    if parts[0] + "/" == RUNS:
        return ws.runs_dir(name).joinpath(*parts[1:])
    raise RemoteIntegrityError(
        f"the manifest of {name} names {manifest_path!r}, neither checkpoints/ nor runs/: "
        "refusing it; push the experiment again from a trusted machine"
    )


def manifest_cache(ws: Workspace) -> Path:
    """Where manifests read from any store are kept (named by their digest, so shared)."""
    return ws.state_dir / "remote" / "manifests"


def _regular_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = []
    for parent, directories, names in os.walk(directory):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        found += [Path(parent) / n for n in sorted(names) if not n.startswith(".")]
    return [p for p in found if p.is_file() and not p.is_symlink()]
