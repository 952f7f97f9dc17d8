"""``expman push``: objects to the store, branches to the git remote, manifests last."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from expman._errors import RemoteError
from expman.experiments._workspace import Workspace
from expman.remote._config import RemoteConfig
from expman.remote._files import local_files, recorded_checkpoints
from expman.remote._git import GitRemote
from expman.remote._progress import Progress
from expman.remote._store import FileEntry, Manifest, ObjectStore

__all__ = ["PushResult", "push_experiments"]


@dataclass(frozen=True)
class PushResult:
    """What one push did, per experiment and in all."""

    remote: str
    url: str
    experiments: tuple[str, ...]
    uploaded_files: int
    uploaded_bytes: int
    already_stored: int
    manifests_written: tuple[str, ...]
    behind: tuple[str, ...] = field(default_factory=tuple)


def push_experiments(
    ws: Workspace, remote: RemoteConfig, names: Sequence[str], *, progress: Progress
) -> PushResult:
    """Push ``names`` (every experiment when empty).

    Order: (1) every object the store lacks, content-addressed; (2) the
    branches, refused by git unless they fast-forward; (3) one manifest per
    experiment whose branch went up, naming its files. An interruption at any
    point leaves the store readable and the next push resumes.
    """
    chosen = list(names) or [summary.name for summary in ws.experiments()]
    git_remote = GitRemote(ws.root, remote.git_remote)
    heads: dict[str, str] = {}
    pushed: list[str] = []
    behind: list[str] = []
    for name in chosen:
        head = ws.head_of(name)
        there = ws.repo.resolve(f"refs/remotes/{remote.git_remote}/{ws.ref(name).branch}")
        if there is not None and head != there and git_remote.is_ancestor(head, there):
            behind.append(name)  # the remote has more (as of the last pull): nothing to send
            continue
        heads[name] = head
        if head != there:
            pushed.append(name)
    store = ObjectStore(remote)
    manifests: dict[str, Manifest] = {}
    changed: list[str] = []
    uploads: dict[str, tuple[Path, FileEntry]] = {}
    for name, head in heads.items():
        recorded = {c.file: c.entry for c in recorded_checkpoints(ws, name, head)}
        local = local_files(ws, name, recorded)
        old = store.read_manifest(name)
        files = dict(old.files) if old else {}
        files.update({path: entry for path, (_, entry) in local.items()})
        manifest = Manifest(name, head, files)
        manifests[name] = manifest
        if old != manifest:
            changed.append(name)
        known = {entry.sha256 for entry in old.files.values()} if old else set()
        for path, entry in local.values():
            if entry.sha256 not in known:
                uploads.setdefault(entry.sha256, (path, entry))
    missing = {entry.sha256 for entry in store.missing([e for _, e in uploads.values()])}
    to_send = [uploads[digest] for digest in sorted(missing)]
    store.upload(to_send, progress, f"uploading to {remote.name}")
    refused_refs = set(git_remote.push([str(ws.ref(name)) for name in pushed], progress))
    refused = [name for name in pushed if str(ws.ref(name)) in refused_refs]
    written = []
    for name in changed:
        if name not in refused:
            store.write_manifest(manifests[name])
            written.append(name)
    if refused:
        raise RemoteError(
            f"the git remote {remote.git_remote} has runs of {', '.join(refused)} that this "
            f"machine does not have (not a fast-forward): run expman pull {' '.join(refused)} "
            "first, then push again; nothing was lost on either side"
        )
    return PushResult(
        remote=remote.name,
        url=remote.url,
        experiments=tuple(heads),
        uploaded_files=len(to_send),
        uploaded_bytes=sum(entry.size for _, entry in to_send),
        already_stored=len(uploads) - len(to_send),
        manifests_written=tuple(written),
        behind=tuple(behind),
    )
