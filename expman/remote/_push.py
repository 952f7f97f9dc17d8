"""``expman push``: objects to the store, branches to the git remote, manifests last."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from expman._errors import RemoteError
from expman.experiments._workspace import Workspace
from expman.remote._config import RemoteConfig
from expman.remote._files import local_files, manifest_cache, recorded_checkpoints
from expman.remote._manifest import FileEntry, Manifest
from expman.remote._progress import Progress
from expman.remote._pushed import PushMemory, fingerprint

if TYPE_CHECKING:
    from expman.remote._git import GitRemote

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
    branches, refused by git unless they fast-forward; (3) one new manifest per
    experiment that has files the store's manifests do not name yet. An
    interruption at any point leaves the store readable and the next push
    resumes. An experiment this machine already pushed as it is now (same
    commit, same files) costs no request at all.
    """
    prefix = ws.config.branch_prefix
    local_heads = {
        i.ref.removeprefix(f"refs/heads/{prefix}"): i.commit
        for i in ws.repo.refs(f"refs/heads/{prefix}")
    }
    chosen = list(names) or sorted(local_heads)
    tracking = f"refs/remotes/{remote.git_remote}/{prefix}"
    remote_heads = {i.ref.removeprefix(tracking): i.commit for i in ws.repo.refs(tracking)}

    @functools.cache
    def git_remote() -> GitRemote:  # GitPython and fsspec are imported only when needed
        from expman.remote._git import GitRemote

        return GitRemote(ws.root, remote.git_remote)

    heads: dict[str, str] = {}
    pushed: list[str] = []
    behind: list[str] = []
    for name in chosen:
        head = local_heads.get(name) or ws.head_of(name)
        there = remote_heads.get(name)
        if there is not None and head != there and git_remote().is_ancestor(head, there):
            behind.append(name)  # the remote has more (as of the last pull): nothing to send
            continue
        heads[name] = head
        if head != there:
            pushed.append(name)
    memory = PushMemory(ws.state_dir / "remote" / f"{remote.name}.json", remote.url)
    local: dict[str, dict[str, tuple[Path, FileEntry]]] = {}
    prints: dict[str, str] = {}
    for name, head in heads.items():
        recorded = {c.file: c.entry for c in recorded_checkpoints(ws, name, head)}
        local[name] = local_files(ws, name, recorded, memory)
        prints[name] = fingerprint(head, {path: e for path, (_, e) in local[name].items()})
    todo = [n for n in heads if n in pushed or memory.pushed.get(n) != prints[n]]
    if not todo:
        memory.save()
        return PushResult(remote.name, remote.url, tuple(heads), 0, 0, 0, (), tuple(behind))
    from expman.remote._store import ObjectStore

    if pushed:
        git_remote()  # no such git remote: say so before uploading anything
    store = ObjectStore(remote, cache=manifest_cache(ws))
    stored = store.read_manifests(todo)
    changed: list[str] = []
    uploads: dict[str, tuple[Path, FileEntry]] = {}
    for name in todo:
        files = {path: entry for path, (_, entry) in local[name].items()}
        old = stored.get(name)
        if old is None or not old.covers(files):
            changed.append(name)
        known = old.digests() if old else set()
        for path, entry in local[name].values():
            if entry.digest not in known:
                uploads.setdefault(entry.digest, (path, entry))
    missing = {entry.digest for entry in store.missing([e for _, e in uploads.values()])}
    to_send = [uploads[digest] for digest in sorted(missing)]
    store.upload(to_send, progress, f"uploading to {remote.name}")
    refused_refs = set(git_remote().push([str(ws.ref(name)) for name in pushed], progress))
    refused = [name for name in pushed if str(ws.ref(name)) in refused_refs]
    written = []
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    for name in changed:
        if name not in refused:
            old = stored.get(name)
            files = old.files() if old else {}
            files.update({path: entry for path, (_, entry) in local[name].items()})
            store.write_manifest(Manifest(name, heads[name], files, now))
            written.append(name)
    for name in todo:
        if name not in refused:
            memory.pushed[name] = prints[name]
    memory.save()
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
