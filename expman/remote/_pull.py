"""``expman pull``: branches from the git remote, then files from the store, verified.

A branch moves only forward: a new experiment is created, one this machine is
behind on fast-forwards, and one that both machines ran since they last met is
left as it is and reported (nothing is lost on either side). Files come only
from what a manifest names; every checkpoint is checked against the digest in
the run record on the branch, then given every check a restore makes before it
reads a tensor (the tensors' own checksums are verified by each restore as it
reads), before it takes its name in the checkpoint directory (never replacing one).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from expman._digest import algorithm_of, file_digest
from expman._errors import (
    CHECKPOINT_REMEDY,
    CheckpointError,
    ExperimentNotFoundError,
    RemoteIntegrityError,
)
from expman.checkpoints import _sandbox as sandbox
from expman.checkpoints._catalog import CheckpointDirectory
from expman.checkpoints._durable import fsync_directory, fsync_file, temporary_path
from expman.experiments._workspace import Workspace
from expman.remote._config import RemoteConfig
from expman.remote._files import (
    CHECKPOINTS,
    RecordedCheckpoint,
    latest_recorded,
    local_path,
    manifest_cache,
    recorded_checkpoints,
)
from expman.remote._git import GitRemote
from expman.remote._manifest import FileEntry, Manifests
from expman.remote._progress import Progress
from expman.remote._store import ObjectStore

__all__ = ["CheckpointChoice", "PullResult", "fetch_checkpoints", "pull_experiments"]

CheckpointChoice = Literal["none", "latest", "all"]
_VERIFIERS = 2  # checkpoints verified at once
BranchUpdate = Literal["created", "fast-forward", "up to date", "ahead", "diverged"]


@dataclass(frozen=True)
class PullResult:
    remote: str
    url: str
    branches: dict[str, BranchUpdate]
    downloaded_files: int
    downloaded_bytes: int
    checkpoints: dict[str, list[int]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def pull_experiments(
    ws: Workspace,
    remote: RemoteConfig,
    names: Sequence[str],
    *,
    checkpoints: CheckpointChoice,
    logs: bool = True,
    progress: Progress,
) -> PullResult:
    """Fetch ``names`` (every experiment on the remote when empty) and their files.

    With ``checkpoints="none"`` and ``logs=False``, only the branches come:
    the store is not contacted at all.
    """
    git_remote = GitRemote(ws.root, remote.git_remote)
    prefix = ws.config.branch_prefix
    needs_store = logs or checkpoints != "none"
    opener = ThreadPoolExecutor(2, "expman-open-store")
    # the storage library (s3fs: about 0.5 s of imports) loads while git fetches
    opening = opener.submit(ObjectStore, remote, cache=manifest_cache(ws)) if needs_store else None
    if checkpoints != "none":
        # the process that checks pulled checkpoints starts (0.3 s, on the other core)
        # while this one is busy with imports and the network, not during the downloads
        opener.submit(_start_checker)
    opener.shutdown(wait=False)
    git_remote.fetch(prefix, progress)
    tracking = f"refs/remotes/{remote.git_remote}/{prefix}"
    available = {info.ref[len(tracking) :]: info.commit for info in ws.repo.refs(tracking)}
    for name in names:
        if name not in available:
            raise ExperimentNotFoundError(
                f"the git remote {remote.git_remote} has no experiment {name} (it has "
                f"{len(available)}): check the name, or push it from the machine that has it"
            )
    chosen = list(names) or sorted(available)
    branches = _update_branches(ws, git_remote, {name: available[name] for name in chosen})
    current = [name for name, update in branches.items() if update not in ("ahead", "diverged")]
    # this machine's own files are newer for the others: leave them
    wanted_files = current if needs_store else []
    store = opening.result() if opening and wanted_files else None
    stored = store.read_manifests(wanted_files) if store else {}
    downloads: list[tuple[str, str, FileEntry, Path]] = []  # name, manifest path, entry, target
    wanted: dict[str, list[RecordedCheckpoint]] = {}
    problems: list[str] = []
    for name in wanted_files:
        manifests = stored.get(name)
        if manifests is None:
            if recorded_checkpoints(ws, name, available[name]):
                problems.append(_no_manifest(name, remote.url))
            continue
        for path, entry in manifests.files().items():
            target = local_path(ws, name, path)
            if path.startswith(CHECKPOINTS) and target.name.startswith("ckpt-"):
                continue  # checkpoints below, verified against the records
            if logs and not (target.is_file() and _digest_matches(target, entry)):
                downloads.append((name, path, entry, target))
        if checkpoints != "none":  # the records are read only when checkpoints are wanted
            recorded = recorded_checkpoints(ws, name, available[name])
            latest = latest_recorded(recorded)
            wanted[name] = recorded if checkpoints == "all" else [latest] if latest else []
    downloaded = _download_files(store, downloads, progress) if store else (0, 0)
    fetched: dict[str, list[int]] = {}
    if store is not None and any(wanted.values()):
        fetched, files, size = fetch_checkpoints(ws, store, wanted, progress, stored)
        downloaded = (downloaded[0] + files, downloaded[1] + size)
    diverged = [name for name, update in branches.items() if update == "diverged"]
    if diverged:
        problems.append(
            f"{', '.join(diverged)} ran both here and on the remote since they last met; the "
            "local branches are unchanged: compare with git log exp/NAME "
            f"{remote.git_remote}/exp/NAME, keep one with git branch -f, or rename one"
        )
    return PullResult(
        remote.name, remote.url, branches, downloaded[0], downloaded[1], fetched, tuple(problems)
    )


def _start_checker() -> None:
    with contextlib.suppress(CheckpointError):  # if it cannot start, the first check says why
        sandbox.start()


def _update_branches(
    ws: Workspace, git_remote: GitRemote, theirs: dict[str, str]
) -> dict[str, BranchUpdate]:
    """Move each branch forward only: new ones created together, in one git process."""
    prefix = f"refs/heads/{ws.config.branch_prefix}"
    ours = {info.ref.removeprefix(prefix): info.commit for info in ws.repo.refs(prefix)}
    updates: dict[str, BranchUpdate] = {}
    created: dict[str, str] = {}
    for name, commit in theirs.items():
        mine = ours.get(name)
        if mine is None:
            created[str(ws.ref(name))] = commit
            updates[name] = "created"
        elif mine == commit:
            updates[name] = "up to date"
        elif git_remote.is_ancestor(mine, commit):
            ws.repo.move_ref(str(ws.ref(name)), commit, mine)
            updates[name] = "fast-forward"
        else:
            updates[name] = "ahead" if git_remote.is_ancestor(commit, mine) else "diverged"
    if created:
        ws.repo.create_refs(created, what="a pulled experiment")
    return updates


def _no_manifest(name: str, url: str) -> str:
    return (
        f"the store {url} has no manifest for {name}, whose records name checkpoints: "
        f"its files were never pushed (or the push stopped early); run expman push {name} "
        "on the machine that ran it"
    )


def _download_files(
    store: ObjectStore, downloads: list[tuple[str, str, FileEntry, Path]], progress: Progress
) -> tuple[int, int]:
    """Logs and event files: downloaded beside, verified, then renamed over the old copy."""
    temporaries = []
    for _, _, _, target in downloads:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporaries.append(temporary_path(target))
    jobs = dict(zip(temporaries, downloads, strict=True))
    objects = [(entry, temporary) for temporary, (_, _, entry, _) in jobs.items()]
    try:
        with contextlib.closing(store.download(objects, progress, "downloading logs")) as arrived:
            for _, temporary in arrived:
                name, path, entry, target = jobs[temporary]
                _check_digest(temporary, entry, f"{path} of {name}", store.url)
                os.replace(temporary, target)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    return len(downloads), sum(entry.size for _, _, entry, _ in downloads)


def fetch_checkpoints(
    ws: Workspace,
    store: ObjectStore,
    wanted: dict[str, list[RecordedCheckpoint]],
    progress: Progress,
    stored: dict[str, Manifests] | None = None,
) -> tuple[dict[str, list[int]], int, int]:
    """Download the checkpoints not here yet; each verified before it is committed.

    Each file is checked (its digest, then the file's structure as a restore
    checks it before reading) as soon as it has arrived, while the others are still downloading.
    Returns the steps now present per experiment, and the files and bytes downloaded.
    """
    jobs: dict[Path, tuple[str, RecordedCheckpoint, Path]] = {}  # temporary -> its checkpoint
    missing = [n for n, r in wanted.items() if any(not _final(ws, n, c).exists() for c in r)]
    if stored is None:
        stored = store.read_manifests(missing)
    for name in missing:
        manifests = stored.get(name)
        if manifests is None:
            raise RemoteIntegrityError(_no_manifest(name, store.url))
        directory = ws.checkpoint_dir(name)
        for checkpoint in wanted[name]:
            final = _final(ws, name, checkpoint)
            if final.exists():
                continue
            if not manifests.names(CHECKPOINTS + checkpoint.file, checkpoint.entry):
                raise RemoteIntegrityError(
                    f"{checkpoint.file} of {name} (step {checkpoint.step}) is not in the store's "
                    "manifest as its record names it (its push did not finish, or another "
                    f"machine pushed different bytes): run expman push {name} on the machine "
                    "that ran it"
                )
            directory.mkdir(parents=True, exist_ok=True)
            jobs[temporary_path(final)] = (name, checkpoint, final)

    def verify(temporary: Path) -> None:
        name, checkpoint, final = jobs[temporary]
        where = f"{checkpoint.file} of {name}"
        synced = syncer.submit(fsync_file, temporary)  # the disk writes while the CPU checks
        _check_digest(temporary, checkpoint.entry, where, store.url)
        _validate(temporary, where)
        synced.result()
        _commit_no_replace(temporary, final)

    objects = [(c.entry, temporary) for temporary, (_, c, _) in jobs.items()]
    verifier = ThreadPoolExecutor(_VERIFIERS, "expman-verify")
    syncer = ThreadPoolExecutor(_VERIFIERS, "expman-fsync")
    try:
        # each file is verified (on its own thread: hashing releases the GIL)
        # as soon as it has arrived, while the others still download
        with contextlib.closing(
            store.download(objects, progress, "downloading checkpoints")
        ) as got:
            checks = []
            for _, temporary in got:
                checks.append(verifier.submit(verify, temporary))
                for check in checks:
                    if check.done():
                        check.result()  # a failed check stops the downloads now
        for check in checks:
            check.result()
    finally:
        verifier.shutdown(wait=True, cancel_futures=True)
        syncer.shutdown(wait=True)
        for temporary in jobs:
            temporary.unlink(missing_ok=True)
    present: dict[str, list[int]] = {}
    for name in wanted:
        directory = ws.checkpoint_dir(name)
        steps = CheckpointDirectory(directory).steps() if directory.is_dir() else {}
        if steps:
            CheckpointDirectory(directory).write_index(max(steps), steps)
        present[name] = sorted(steps)
    return present, len(jobs), sum(c.entry.size for _, c, _ in jobs.values())


def _final(ws: Workspace, name: str, checkpoint: RecordedCheckpoint) -> Path:
    return ws.checkpoint_dir(name) / checkpoint.file


def _digest_matches(path: Path, entry: FileEntry) -> bool:
    return file_digest(path, algorithm_of(entry.digest)) == entry.digest


def _check_digest(path: Path, entry: FileEntry, what: str, url: str) -> None:
    digest = file_digest(path, algorithm_of(entry.digest))
    if digest != entry.digest or path.stat().st_size != entry.size:
        raise RemoteIntegrityError(
            f"{what} from {url} does not match its digest ({digest[:19]}..., expected "
            f"{entry.digest[:19]}...): the object on the store is damaged and was not used; "
            "push it again from a machine that has it"
        )


def _validate(path: Path, what: str) -> None:
    """A pulled file is a stranger's file: every check a restore makes before it reads."""
    try:
        sandbox.check_whole(path)
    except CheckpointError as error:
        # The engine's message names the download's temporary file and how to go on
        # from a local damaged file; neither helps here.
        reason = str(error).replace(str(path), "it", 1).removesuffix(f": {CHECKPOINT_REMEDY}")
        raise RemoteIntegrityError(
            f"{what} matches its digest but is not a valid checkpoint: {reason}; it was not used"
        ) from error


def _commit_no_replace(temporary: Path, final: Path) -> None:
    """Give the verified, fsynced file its name, never replacing one (a link fails if it exists)."""
    with contextlib.suppress(FileExistsError):  # the same checkpoint arrived meanwhile
        os.link(temporary, final)
    fsync_directory(final.parent)
