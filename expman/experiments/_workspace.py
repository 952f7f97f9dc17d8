"""The workspace: a git repository with ``expman.toml``, its experiments and their runs.

Everything the CLI does is a method here; the CLI only parses and renders.
Local state (checkpoints, worktrees, run logs, locks) lives in ``.expman/``,
which ``expman init`` adds to ``.gitignore``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from expman._errors import (
    ConfigError,
    ExperimentExistsError,
    ExperimentNotFoundError,
    InvalidNameError,
    RepositoryError,
    UsageError,
)
from expman.experiments._config import (
    CONFIG_NAME,
    AssignmentResult,
    WorkspaceConfig,
    apply_assignments,
    decode_config,
    default_config_text,
    parse_assignment,
    parse_config,
    read_config,
)
from expman.experiments._gitrepo import GitRepo, RefInfo
from expman.experiments._lock import ExperimentLock
from expman.experiments._names import ExperimentRef, validate_name
from expman.experiments._records import new_experiment_message, parse_metrics, record_directory

__all__ = [
    "LARGE_FILE_BYTES",
    "STATE_DIR",
    "ExperimentSummary",
    "InitResult",
    "NewResult",
    "RemoveResult",
    "RunSummary",
    "Source",
    "Workspace",
]

STATE_DIR = ".expman"
LARGE_FILE_BYTES = 10_000_000  # expman new warns when it snapshots a larger untracked file
_IGNORE_LINE = f"/{STATE_DIR}/"


@dataclass(frozen=True)
class InitResult:
    root: Path
    config_created: bool
    gitignore_updated: bool
    template_files: tuple[str, ...] = ()
    repository_created: bool = False


@dataclass(frozen=True)
class NewResult:
    name: str
    branch: str
    commit: str
    base: str | None
    source: str
    changes: tuple[AssignmentResult, ...]
    large_files: tuple[tuple[str, int], ...] = ()  # untracked files over LARGE_FILE_BYTES
    archived_checkpoints: Path | None = None  # left by a removed experiment of that name


@dataclass(frozen=True)
class Source:
    """Where new experiments come from: a commit, its tree and its ``expman.toml``.

    ``tree`` is the snapshot itself: for the working tree, it may differ from
    the commit's (uncommitted edits); with ``--from``, it is the commit's.
    """

    commit: str
    tree: str
    config_text: str
    base: str | None
    description: str


@dataclass(frozen=True)
class RunSummary:
    """One run, as its commit on the experiment's branch tells it."""

    number: int
    commit: str
    subject: str
    status: str
    exit_code: int | None
    step: int | None
    metrics: dict[str, float]
    duration: str | None
    parent_checkpoint: str | None


@dataclass(frozen=True)
class ExperimentSummary:
    """An experiment at a glance, from its branch head alone."""

    name: str
    branch: str
    commit: str
    base: str | None
    runs: int
    status: str
    last_step: int | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoveResult:
    name: str
    branch: str
    commit: str
    removed_checkpoints: bool


class Workspace:
    """A git repository managed by expman.

    Example:
        >>> ws = Workspace.open(".")  # doctest: +SKIP
        >>> ws.new("wide", base="base", assignments=["model.hidden_units=[20,20]"])
    """

    def __init__(self, repo: GitRepo, config: WorkspaceConfig) -> None:
        self.repo = repo
        self.root = repo.root
        self.config = config
        self.state_dir = self.root / STATE_DIR

    @classmethod
    def open(cls, path: Path | str = ".") -> Workspace:
        repo = GitRepo.discover(Path(path).absolute())
        config_path = repo.root / CONFIG_NAME
        return cls(repo, parse_config(read_config(config_path), str(config_path)))

    @staticmethod
    def init(
        path: Path | str = ".", *, command: str | None = None, template: str | None = None
    ) -> InitResult:
        """Create ``expman.toml`` and ignore ``.expman/``; harmless when done twice.

        With ``template``, its files are copied too, refusing to overwrite any
        existing file (checked before anything is written). A template may go
        into a new or empty directory outside any repository: it becomes a git
        repository with the template as its first commit.
        """
        directory = Path(path).absolute()
        if directory.exists() and not directory.is_dir():
            kind = "a file" if directory.is_file() else "not a directory"
            raise UsageError(f"{directory} is {kind}, not a directory: give a directory")
        files = template_files(template) if template else {}
        created = False
        try:
            repo = GitRepo.discover(directory)
        except RepositoryError:
            if not template or (directory.exists() and any(directory.iterdir())):
                raise
            repo = GitRepo.create(directory)
            created = True
        root = repo.root
        clashes = sorted(name for name in files if _occupied(root, name))
        if clashes:
            raise UsageError(
                f"expman init would overwrite {', '.join(clashes)} in {root}: move them "
                "away or use another directory"
            )
        config = root / CONFIG_NAME
        config_created = not config.exists()
        for name, content in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        if config_created and CONFIG_NAME not in files:
            config.write_text(default_config_text(command or "python train.py"), "utf-8")
        gitignore = root / ".gitignore"
        existing = gitignore.read_text(encoding="utf-8") if gitignore.exists() else ""
        updated = _IGNORE_LINE not in existing.splitlines()
        if updated:
            prefix = "" if existing == "" or existing.endswith("\n") else "\n"
            gitignore.write_text(
                f"{existing}{prefix}# expman's local state: checkpoints, worktrees, run logs\n"
                f"{_IGNORE_LINE}\n",
                encoding="utf-8",
            )
        if created:
            repo.check_identity()
            repo.commit_everything(f"{template} template, from expman init --template {template}")
        return InitResult(root, config_created, updated, tuple(sorted(files)), created)

    # -- naming and places ------------------------------------------------------------

    def ref(self, name: str) -> ExperimentRef:
        return ExperimentRef(validate_name(name), self.config.branch_prefix)

    def head_of(self, name: str) -> str:
        """The commit of an experiment's branch; ExperimentNotFoundError if none."""
        ref = self.ref(name)
        commit = self.repo.resolve(str(ref))
        if commit is None:
            known = [s.name for s in self.experiments()][:10]
            hint = f" (experiments: {', '.join(known)})" if known else " (there are none yet)"
            raise ExperimentNotFoundError(
                f"no experiment named {name!r}{hint}: create it with expman new {name}"
            )
        return commit

    def checkpoint_dir(self, name: str) -> Path:
        return self.state_dir / "checkpoints" / validate_name(name)

    def worktree_dir(self, name: str) -> Path:
        return self.state_dir / "worktrees" / validate_name(name)

    def runs_dir(self, name: str) -> Path:
        return self.state_dir / "runs" / validate_name(name)

    def archive_checkpoints(self, name: str) -> Path | None:
        """Move an experiment's checkpoints to ``.expman/archive/NAME-<time>/`` (never delete)."""
        directory = self.checkpoint_dir(name)
        if not directory.is_dir() or not any(directory.iterdir()):
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        archive = self.state_dir / "archive" / f"{name}-{stamp}"
        archive.parent.mkdir(parents=True, exist_ok=True)
        directory.rename(archive)
        return archive

    def lock(self, name: str) -> ExperimentLock:
        return ExperimentLock(self.state_dir / "locks" / f"{validate_name(name)}.lock", name)

    def experiment_config(self, commit: str) -> tuple[str, WorkspaceConfig]:
        """The ``expman.toml`` of a commit, as text and parsed."""
        content = self.repo.read_file(commit, CONFIG_NAME)
        if content is None:
            raise ConfigError(f"commit {commit[:12]} has no {CONFIG_NAME}")
        source = f"{CONFIG_NAME} at {commit[:12]}"
        text = decode_config(content, source)
        return text, parse_config(text, source)

    # -- new ----------------------------------------------------------------------------

    def new(
        self,
        name: str,
        *,
        base: str | None = None,
        assignments: Sequence[str] = (),
        message: str | None = None,
    ) -> NewResult:
        """Create ``exp/NAME`` from the working tree (or ``base``), with ``--set`` applied.

        The working tree is snapshotted as it is, uncommitted and untracked
        (not ignored) files included, into a temporary index; the user's HEAD,
        index and files are left exactly as they were.
        """
        ref = self.ref(name)
        parsed = [parse_assignment(a) for a in assignments]
        self.repo.check_identity()
        if self.repo.resolve(str(ref)) is not None:
            raise ExperimentExistsError(
                f"experiment {name} already exists ({ref.branch}): choose another name, or "
                f"remove it with expman rm {name}"
            )
        large = self._large_untracked_files() if base is None else ()
        source = self.source(base)
        new_text, changes = apply_assignments(source.config_text, parsed)
        files = {CONFIG_NAME: new_text.encode()}
        tree = self.repo.tree_with(source.tree, files) if parsed else source.tree
        parse_config(new_text)  # the result must still be a valid config
        described = [f"{c.assignment.dotted} = {_toml_value(c.assignment.value)}" for c in changes]
        commit = self.repo.commit_tree(
            tree,
            [source.commit],
            new_experiment_message(name, source.base, source.description, described, message),
        )
        self.repo.create_ref(str(ref), commit, what=f"experiment {name}")
        # Checkpoints left by a removed experiment of the same name (rm --keep-checkpoints)
        # are not this one's: a first run must not resume from them.
        archived = self.archive_checkpoints(name)
        return NewResult(
            name,
            ref.branch,
            commit,
            source.base,
            source.description,
            tuple(changes),
            large,
            archived,
        )

    def source(self, base: str | None) -> Source:
        """What a new experiment starts from: the working tree as it is, or ``base``."""
        if base is not None:
            parent, base_name = self._resolve_base(base)
            text, _ = self.experiment_config(parent)
            tree = self.repo.tree_of(parent)
            return Source(parent, tree, text, base_name, f"{base} at {parent[:12]}")
        parent = self.repo.head_commit()
        branch = self.repo.head_branch()
        if branch is None:
            raise RepositoryError(
                "HEAD is detached, so the experiment would have no branch to come from: "
                "check out a branch (git switch main), or give --from REF"
            )
        text = read_config(self.root / CONFIG_NAME)
        # The config as it is now goes in with the snapshot, whether or not git tracks it.
        tree = self.repo.snapshot_worktree({CONFIG_NAME: text.encode()}, exclude=[STATE_DIR])
        dirty = tree != self.repo.tree_of(parent)
        description = f"{branch} at {parent[:12]}" + (" with uncommitted changes" if dirty else "")
        return Source(parent, tree, text, None, description)

    def _large_untracked_files(self) -> tuple[tuple[str, int], ...]:
        """Untracked, not ignored files over LARGE_FILE_BYTES, which a snapshot would store."""
        large = []
        for path in self.repo.untracked_files():
            if path.split("/", 1)[0] == STATE_DIR:
                continue
            try:
                size = (self.root / path).lstat().st_size
            except OSError:
                continue
            if size > LARGE_FILE_BYTES:
                large.append((path, size))
        return tuple(large)

    def _resolve_base(self, base: str) -> tuple[str, str]:
        """An experiment name or any git revision -> (commit, how to name it)."""
        try:
            experiment = self.repo.resolve(str(self.ref(base)))
        except InvalidNameError:  # not an experiment name: maybe a revision
            experiment = None
        if experiment is not None:
            return experiment, base
        commit = self.repo.resolve(base)
        if commit is None:
            raise ExperimentNotFoundError(
                f"--from {base!r} is neither an experiment nor a git revision: check the name "
                "with expman list"
            )
        return commit, base

    # -- reading experiments -------------------------------------------------------------

    def experiments(self) -> list[ExperimentSummary]:
        """Every experiment, from one ``git for-each-ref`` over the branches."""
        prefix = f"refs/heads/{self.config.branch_prefix}"
        locks = self.state_dir / "locks"
        maybe_running = {p.stem for p in locks.glob("*.lock")} if locks.is_dir() else set()
        summaries = []
        for info in self.repo.refs(prefix):
            name = info.ref[len(prefix) :]
            trailers = info.trailers
            if "Runs" not in trailers:
                trailers = self.latest_trailers(info.commit)
            summaries.append(self._summary(name, info, trailers, maybe_running))
        return summaries

    def _summary(
        self,
        name: str,
        info: RefInfo,
        trailers: Mapping[str, str],
        maybe_running: set[str],
    ) -> ExperimentSummary:
        runs = _int(trailers.get("Runs")) or 0
        status = trailers.get("Status", "never run" if runs == 0 else "unknown")
        if name in maybe_running and self.lock(name).is_held():
            status = "running"
        return ExperimentSummary(
            name=name,
            branch=f"{self.config.branch_prefix}{name}",
            commit=info.commit,
            base=trailers.get("Base") or None,
            runs=runs,
            status=status,
            last_step=_int(trailers.get("Step")),
            metrics=parse_metrics(trailers.get("Metrics", "")),
        )

    def latest_trailers(self, commit: str) -> Mapping[str, str]:
        """Trailers of the newest commit expman wrote on a branch (the user may add more)."""
        own = self.repo.commit_trailers(commit)  # the head itself, through an open reader
        if own is not None and "Runs" in own:
            return own
        for entry in self.repo.log(commit, limit=200):
            if "Runs" in entry.trailers:
                return entry.trailers
        return {}

    def summary(self, name: str) -> ExperimentSummary:
        head = self.head_of(name)
        info = RefInfo(str(self.ref(name)), head, "", {})
        locks = {name} if self.lock(name).is_held() else set()
        return self._summary(name, info, self.latest_trailers(head), locks)

    def runs(self, name: str) -> list[RunSummary]:
        """The runs of an experiment, oldest first."""
        runs = []
        for entry in self.repo.log(self.head_of(name)):
            trailers = entry.trailers
            if "Run" not in trailers or "Status" not in trailers:
                continue
            if trailers.get("Experiment") != name:
                continue  # a run of the experiment this one was created from
            number = _int(trailers["Run"])
            if number is None:
                continue
            runs.append(
                RunSummary(
                    number=number,
                    commit=entry.commit,
                    subject=entry.subject,
                    status=trailers["Status"],
                    exit_code=_int(trailers.get("Exit-Code")),
                    step=_int(trailers.get("Step")),
                    metrics=parse_metrics(trailers.get("Metrics", "")),
                    duration=trailers.get("Duration"),
                    parent_checkpoint=trailers.get("Parent-Checkpoint"),
                )
            )
        return runs[::-1]

    def run_checkpoints(self, name: str, runs: Sequence[RunSummary]) -> dict[int, list[int]]:
        """The checkpoint steps kept after each run, from its record (one git process)."""
        if not runs:
            return {}
        paths = [f"{record_directory(name, r.number)}/checkpoints.json" for r in runs]
        contents = self.repo.read_files(self.head_of(name), paths)
        kept: dict[int, list[int]] = {}
        for run, path in zip(runs, paths, strict=True):
            content = contents[path]
            kept[run.number] = [c["step"] for c in json.loads(content)] if content else []
        return kept

    def params_of(self, summaries: Sequence[ExperimentSummary]) -> dict[str, dict[str, Any]]:
        """The ``[params]`` of each experiment's head, with one git process."""
        contents = self.repo.read_objects([f"{s.commit}:{CONFIG_NAME}" for s in summaries])
        found = {}
        for summary, content in zip(summaries, contents, strict=True):
            source = f"{CONFIG_NAME} of {summary.name}"
            config = parse_config(content.decode("utf-8"), source) if content else None
            found[summary.name] = dict(config.params) if config else {}
        return found

    def params(self, name: str) -> dict[str, Any]:
        return dict(self.experiment_config(self.head_of(name))[1].params)

    def run_record(self, name: str, number: int) -> dict[str, Any]:
        """The committed ``run.json`` of a run."""
        head = self.head_of(name)
        content = self.repo.read_file(head, f"{record_directory(name, number)}/run.json")
        if content is None:
            raise ExperimentNotFoundError(f"experiment {name} has no run {number}")
        record: dict[str, Any] = json.loads(content)
        return record

    # -- rm -------------------------------------------------------------------------------

    def remove(self, name: str, *, keep_checkpoints: bool = False) -> RemoveResult:
        """Delete the branch, its worktree, run logs and (unless kept) checkpoints."""
        head = self.head_of(name)
        ref = self.ref(name)
        with self.lock(name):
            self.repo.remove_worktree(self.worktree_dir(name))
            self.repo.delete_ref(str(ref), head)
            shutil.rmtree(self.runs_dir(name), ignore_errors=True)
            if not keep_checkpoints:
                shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)
        (self.state_dir / "locks" / f"{name}.lock").unlink(missing_ok=True)
        return RemoveResult(name, ref.branch, head, not keep_checkpoints)


def template_names() -> list[str]:
    """The templates shipped with expman (``expman init --template NAME``)."""
    from importlib.resources import files

    return sorted(
        entry.name
        for entry in files("expman.templates").iterdir()
        if entry.is_dir() and not entry.name.startswith(("_", "."))
    )


def template_files(name: str) -> dict[str, bytes]:
    """The files of a template shipped with expman (templates/NAME), by relative path."""
    from importlib.resources import files

    templates = files("expman.templates")
    available = template_names()
    if name not in available:
        raise ConfigError(f"unknown template {name!r}: available templates: {', '.join(available)}")
    found: dict[str, bytes] = {}

    def walk(directory: Any, prefix: str) -> None:
        for entry in directory.iterdir():
            if entry.name == "__pycache__":
                continue
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                found[f"{prefix}{entry.name}"] = entry.read_bytes()

    walk(templates / name, "")
    return found


def _occupied(root: Path, name: str) -> bool:
    """Whether writing ``root/name`` would overwrite something (a file where a folder goes too)."""
    target = root / name
    parents = [p for p in target.parents if p != root and root in p.parents]
    return (
        target.exists()
        or target.is_symlink()
        or any(p.exists() and not p.is_dir() for p in parents)
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return (
        json.dumps(value, separators=(", ", ": "))
        if not isinstance(value, str)
        else json.dumps(value)
    )
