"""``expman remote gc``: delete what nothing references from a store, dry run by default.

An object is referenced when any manifest names it, or when a run record on
any experiment branch (local, or as last fetched from the git remote, which
gc fetches first) names its digest. Only objects referenced by neither, and
older than a grace period (a push in progress uploads its objects before it
writes its manifest), are deleted. A manifest whose every entry a newer
manifest of the same experiment also names is redundant: the union of the
experiment's manifests stays the same without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from expman.experiments._workspace import Workspace
from expman.remote._config import RemoteConfig
from expman.remote._files import manifest_cache, recorded_checkpoints
from expman.remote._git import GitRemote
from expman.remote._manifest import Manifests
from expman.remote._progress import Progress
from expman.remote._store import ObjectStore, StoredObject

__all__ = ["GcResult", "collect_garbage"]


@dataclass(frozen=True)
class GcResult:
    """What gc found (and deleted, unless it was a dry run)."""

    remote: str
    url: str
    deleted: bool
    referenced_objects: int
    unreferenced_objects: tuple[str, ...]
    unreferenced_bytes: int
    redundant_manifests: tuple[str, ...]
    kept_recent: int


def collect_garbage(
    ws: Workspace,
    remote: RemoteConfig,
    *,
    delete: bool,
    min_age_seconds: float,
    progress: Progress,
) -> GcResult:
    """Find (and with ``delete``, remove) unreferenced objects and redundant manifests."""
    prefix = ws.config.branch_prefix
    git_remote = GitRemote(ws.root, remote.git_remote)
    git_remote.fetch(prefix, progress)
    store = ObjectStore(remote, cache=manifest_cache(ws))
    stored = store.read_manifests(None)
    referenced = {digest for manifests in stored.values() for digest in manifests.digests()}
    for branches in (f"refs/heads/{prefix}", f"refs/remotes/{remote.git_remote}/{prefix}"):
        for info in ws.repo.refs(branches):
            name = info.ref.removeprefix(branches)
            referenced |= {c.entry.digest for c in recorded_checkpoints(ws, name, info.commit)}
    now = time.time()

    def old(item: StoredObject) -> bool:
        return item.modified is not None and now - item.modified >= min_age_seconds

    objects = [o for o in store.list_objects() if store.digest_of_object(o.path) not in referenced]
    doomed = [o for o in objects if old(o)]
    listed = {o.path: o for o in store.list_manifests()}
    redundant = [
        p for m in stored.values() for p in _redundant(m) if p in listed and old(listed[p])
    ]
    if delete:
        store.delete([o.path for o in doomed] + redundant)
    return GcResult(
        remote=remote.name,
        url=remote.url,
        deleted=delete,
        referenced_objects=len(referenced),
        unreferenced_objects=tuple(store.digest_of_object(o.path) for o in doomed),
        unreferenced_bytes=sum(o.size for o in doomed),
        redundant_manifests=tuple(
            p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in redundant
        ),
        kept_recent=len(objects) - len(doomed),
    )


def _redundant(manifests: Manifests) -> list[str]:
    """Manifests that a newer one covers entirely (newest first wins; the newest stays)."""
    ordered = sorted(
        zip(manifests.manifests, manifests.paths, strict=True), key=lambda m: (m[0].pushed, m[1])
    )
    found = []
    for index, (manifest, path) in enumerate(ordered):
        newer = [m for m, _ in ordered[index + 1 :]]
        if any(all(m.files.get(p) == e for p, e in manifest.files.items()) for m in newer):
            found.append(path)
    return found
