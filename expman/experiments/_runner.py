"""``expman run``: execute an experiment's command in a worktree and record the run.

The command runs in a git worktree of the experiment's branch (detached at
the exact commit), so the user can keep editing their checkout, under the
supervisor (``_supervisor``: signals, live output, the lock's lifetime).
Output goes to the terminal and to ``.expman/runs/NAME/NNN/output.log``.
Whatever the outcome (success, failure, a signal, a refused restore), the run
is committed on the branch as a small text record; a run whose supervisor
died before recording it is recorded as ``lost`` by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from expman._errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CommandNotFoundError,
    ExpmanError,
    UsageError,
)
from expman._json import dumps
from expman.checkpoints._catalog import CheckpointDirectory
from expman.experiments._config import (
    CONFIG_NAME,
    apply_assignments,
    parse_assignment,
    parse_config,
)
from expman.experiments._gitrepo import RefUpdateError
from expman.experiments._hashes import CheckpointHashes
from expman.experiments._lock import ExperimentLock
from expman.experiments._names import validate_name
from expman.experiments._records import (
    CheckpointEntry,
    RunRecord,
    RunStatus,
    record_directory,
    record_files,
    run_message,
    set_params_message,
)
from expman.experiments._runtime import REFUSAL_NAME, RunEnvironment, events_size, read_events
from expman.experiments._supervisor import Outcome, supervise
from expman.experiments._workspace import Workspace

__all__ = [
    "KeptCheckpoint",
    "RunOptions",
    "RunResult",
    "lower_is_better",
    "parse_checkpoint_spec",
    "run_experiment",
]

EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130
LOG_NAME = "output.log"
PENDING_NAME = "run.json"


@dataclass(frozen=True)
class RunOptions:
    """How to run: see ``expman run --help``."""

    assignments: Sequence[str] = ()
    from_checkpoint: str | None = None
    partial: bool = False
    fresh: bool = False
    command: Sequence[str] = ()


@dataclass(frozen=True)
class RunResult:
    experiment: str
    number: int
    status: RunStatus
    exit_code: int
    record_commit: str
    code_commit: str
    log_path: Path
    checkpoint_dir: Path
    subject: str
    refusal: str | None = None
    archived_checkpoints: Path | None = None
    changes: tuple[str, ...] = field(default_factory=tuple)


def parse_checkpoint_spec(spec: str) -> tuple[str, int | None]:
    """``base`` or ``base@200`` -> (experiment, step or None)."""
    name, sep, step = spec.partition("@")
    validate_name(name)
    if not sep:
        return name, None
    if not step.isdigit():
        raise CheckpointNotFoundError(
            f"--from-checkpoint {spec!r}: the step after '@' must be a number, e.g. {name}@200"
        )
    return name, int(step)


def run_experiment(
    ws: Workspace,
    name: str,
    options: RunOptions,
    *,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    fetch_checkpoint: Callable[[KeptCheckpoint], None] | None = None,
) -> RunResult:
    """Run experiment ``name`` and commit its record; return what happened.

    Everything that could fail after the command is checked before it starts:
    the parameters, the git identity the record is committed as, the run
    directory. A run that died unrecorded is recorded as ``lost`` first.

    ``fetch_checkpoint`` is called (under the lock, before anything else is
    checked) when the last record names a newer checkpoint than this machine
    has, unless ``options.fresh``: an experiment pulled from another machine.
    It brings that checkpoint here or raises.
    """
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    # Every read, before the command and for its record, goes through one `git cat-file
    # --batch`, in its own session: a Ctrl-C in the terminal reaches expman's process group
    # and the command's, never the reader (the record reopens it if it died all the same).
    with ws.repo.reading():
        head = ws.head_of(name)
        ref = str(ws.ref(name))
        with ws.lock(name) as lock:
            trailers = ws.latest_trailers(head)
            base = trailers.get("Base") or None
            runs_so_far = _int(trailers.get("Runs")) or 0
            checkpoint_dir = ws.checkpoint_dir(name)
            kept = _kept_checkpoints(ws, name, head, runs_so_far)
            if kept and fetch_checkpoint is not None and not options.fresh:
                own = CheckpointDirectory(checkpoint_dir).steps() if checkpoint_dir.is_dir() else {}
                if max(own, default=-1) < kept[-1].step:
                    fetch_checkpoint(kept[-1])
            text, config = ws.experiment_config(head)
            # What the record needs, checked now rather than discovered after the run.
            ws.repo.check_identity()
            ws.repo.check_ref_unlocked(ref)
            lost = _record_lost_run(ws, name, ref, head, runs_so_far + 1, base, checkpoint_dir)
            if lost is not None:
                head, runs_so_far = lost, runs_so_far + 1
                kept = _kept_checkpoints(ws, name, head, runs_so_far)
                _warn(err, f"run {runs_so_far} of {name} ended unrecorded; recorded it as lost")
            changes: list[str] = []
            if options.assignments:
                head, text, changes = _commit_assignments(
                    ws, name, ref, head, text, options.assignments, base, runs_so_far
                )
                config = parse_config(text)
            command = list(options.command or config.command)
            if not command:
                raise CommandNotFoundError(
                    f"experiment {name} has no command: set [run] command in {CONFIG_NAME}, or "
                    f"give one after --: expman run {name} -- python train.py"
                )
            warm_start, warm_name = _warm_start(ws, options.from_checkpoint)
            archived = ws.archive_checkpoints(name) if options.fresh else None
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            own = CheckpointDirectory(checkpoint_dir).steps()
            if own and options.from_checkpoint:
                raise UsageError(
                    f"experiment {name} already has checkpoints (latest step {max(own)}) and "
                    f"resumes from them, so --from-checkpoint {options.from_checkpoint} would be "
                    f"ignored: add --fresh to set them aside and start from "
                    f"{options.from_checkpoint}"
                )
            if not own and kept and not options.fresh:
                _warn_missing_checkpoints(name, runs_so_far, kept, checkpoint_dir, err)
            parent_checkpoint = f"{name}@{max(own)}" if own else warm_name

            number = runs_so_far + 1
            run_dir = ws.runs_dir(name) / f"{number:03d}"
            worktree = ws.worktree_dir(name)
            ws.repo.checkout_detached(worktree, head)
            environment = RunEnvironment(
                workspace=ws.root,
                experiment=name,
                run_id=f"{name}-{number}-{os.urandom(3).hex()}",  # secrets imports hashlib
                run_dir=run_dir,
                code_commit=head,
                checkpoint_dir=checkpoint_dir,
                params=config.params,
                policy=asdict(config.policy),
                warm_start=warm_start,
                warm_start_name=warm_name,
                partial=options.partial,
            )
            started = time.time()
            pending = _PendingRun(
                run_dir,
                {
                    "run_id": environment.run_id,
                    "command": command,
                    "started": started,
                    "code_commit": head,
                    "parent_checkpoint": parent_checkpoint,
                    "fresh": options.fresh,
                    "params": dict(config.params),
                    "events_start": events_size(checkpoint_dir),
                    "checkpoints_before": sorted(own),
                },
            )
            hashes = _checkpoint_hashes(ws, name)
            with hashes.while_running(checkpoint_dir):  # the record's digests, hashed meanwhile
                outcome = _execute(
                    _resolve_command(command),
                    worktree,
                    {**os.environ, **environment.to_env()},
                    pending,
                    lock,
                    out,
                    err,
                )
            duration = time.time() - started
            refusal = _read_refusal(run_dir)
            status, exit_code = _status(outcome, refusal)
            record = _record(
                ws,
                name,
                pending.data,
                number=number,
                status=status,
                exit_code=exit_code,
                duration=duration,
                base=base,
                checkpoint_dir=checkpoint_dir,
                refusal=refusal,
                key_metric_mode=(config.key_metric, config.key_metric_mode),
                hashes=hashes,
                signal_name=signal.Signals(outcome.received).name if outcome.received else None,
                killed=outcome.killed,
            )
            message = run_message(record)
            with ws.repo.reading():  # the same reader, or a new one if it died meanwhile
                commit = _commit_record(ws, ref, head, record, message)
            pending.recorded()
    return RunResult(
        experiment=name,
        number=number,
        status=status,
        exit_code=exit_code,
        record_commit=commit,
        code_commit=head,
        log_path=run_dir / LOG_NAME,
        checkpoint_dir=checkpoint_dir,
        subject=message.splitlines()[0],
        refusal=refusal,
        archived_checkpoints=archived,
        changes=tuple(changes),
    )


def _status(outcome: Outcome, refusal: str | None) -> tuple[RunStatus, int]:
    """How the run ended, and the exit code expman ends with."""
    if refusal is not None:
        return "refused", EXIT_REFUSED
    if outcome.received == signal.SIGINT:
        return "interrupted", EXIT_INTERRUPTED
    if outcome.received is not None:
        return "terminated", 128 + outcome.received
    if outcome.exit_code == EXIT_INTERRUPTED:
        return "interrupted", EXIT_INTERRUPTED
    return ("succeeded" if outcome.exit_code == 0 else "failed"), outcome.exit_code


def _warn(stream: IO[bytes], message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.write(f"expman: warning: {message}\n".encode())
        stream.flush()


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint that a run record names as kept after that run."""

    experiment: str
    run: int
    step: int
    file: str


def _kept_checkpoints(ws: Workspace, name: str, head: str, runs: int) -> list[KeptCheckpoint]:
    """The checkpoints the last run record keeps, oldest first; none before a first run."""
    if not runs:
        return []
    content = ws.repo.read_file(head, f"{record_directory(name, runs)}/checkpoints.json")
    try:
        kept = [
            KeptCheckpoint(name, runs, int(entry["step"]), str(entry["file"]))
            for entry in json.loads(content or b"[]")
        ]
    except (ValueError, TypeError, KeyError):
        return []
    return sorted(kept, key=lambda checkpoint: checkpoint.step)


def _warn_missing_checkpoints(
    name: str, runs: int, kept: Sequence[KeptCheckpoint], directory: Path, err: IO[bytes]
) -> None:
    """The last record lists checkpoints that are not on this machine: say so before step 0."""
    _warn(
        err,
        f"run {runs} of {name} kept {', '.join(c.file for c in kept)}, but {directory} has "
        "none of them (deleted, or on another machine): this run starts from step 0; stop it "
        "and bring them back to resume, or run with --fresh to start over on purpose",
    )


def _commit_assignments(
    ws: Workspace,
    name: str,
    ref: str,
    head: str,
    text: str,
    assignments: Sequence[str],
    base: str | None,
    runs: int,
) -> tuple[str, str, list[str]]:
    parsed = [parse_assignment(a) for a in assignments]
    new_text, results = apply_assignments(text, parsed)
    parse_config(new_text)
    described = [f"{r.assignment.dotted}={json.dumps(r.assignment.value)}" for r in results]
    tree = ws.repo.tree_with(head, {CONFIG_NAME: new_text.encode()})
    commit = ws.repo.commit_tree(tree, [head], set_params_message(name, base, runs, described))
    ws.repo.move_ref(ref, commit, head)
    notes = [
        f"{r.assignment.dotted}: {'changed' if r.existed else 'added (it did not exist)'}"
        for r in results
    ]
    return commit, new_text, notes


def _warm_start(ws: Workspace, spec: str | None) -> tuple[Path | None, str | None]:
    if spec is None:
        return None, None
    other, step = parse_checkpoint_spec(spec)
    ws.head_of(other)  # the experiment must exist
    directory = ws.checkpoint_dir(other)
    catalog = CheckpointDirectory(directory)
    steps = catalog.steps() if directory.is_dir() else {}
    if not steps:
        raise CheckpointNotFoundError(
            f"experiment {other} has no checkpoint to start from: run it first (expman run {other})"
        )
    if step is None:
        step = max(steps)
    if step not in steps:
        available = ", ".join(str(s) for s in steps)
        raise CheckpointNotFoundError(
            f"experiment {other} has no checkpoint at step {step} (available: {available})"
        )
    catalog.metadata(steps[step])  # damaged or foreign: refused before the run starts
    return steps[step], f"{other}@{step}"


def _resolve_command(command: list[str]) -> list[str]:
    """``python`` means the interpreter expman itself runs under (with expman installed)."""
    if command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return command


def _execute(
    command: list[str],
    cwd: Path,
    env: Mapping[str, str],
    pending: _PendingRun,
    lock: ExperimentLock,
    stdout: IO[bytes],
    stderr: IO[bytes],
) -> Outcome:
    """Run ``command`` under the supervisor; it inherits (and so holds) the experiment lock."""

    def started(pid: int) -> None:
        lock.note_command(pid)
        pending.started(pid)

    try:
        with open(pending.directory / LOG_NAME, "wb") as log:
            return supervise(
                command,
                cwd=cwd,
                env=env,
                log=log,
                stdout=stdout,
                stderr=stderr,
                keep_fds=[lock.fd],
                on_start=started,
            )
    except OSError as error:
        if "pid" in pending.data:  # it started: not a failure to start
            raise
        pending.discard()
        reason = error.strerror
        if error.errno == errno.ENOEXEC:
            reason = "it is not a program (a script needs a first line such as #!/bin/sh)"
        raise CommandNotFoundError(
            f"cannot start {command[0]!r}: {reason}; check [run] command in "
            f"{CONFIG_NAME} or the command after --"
        ) from error


class _PendingRun:
    """``.expman/runs/NAME/NNN/run.json``: a started run not yet recorded.

    Written before the command starts (so the run directory is known to be
    writable) and given the command's pid once it runs. The next run of the
    experiment finds it if this one was never recorded, and records it as lost.
    """

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.directory = directory
        self.data = data
        try:
            if directory.exists():
                shutil.rmtree(directory)  # a run that never started its command
            directory.mkdir(parents=True)
            self._write()
        except OSError as error:
            raise ExpmanError(
                f"cannot write the run directory {directory}: {error.strerror}; make "
                f"{directory.parent} writable and retry"
            ) from error

    def _write(self) -> None:
        (self.directory / PENDING_NAME).write_text(dumps(self.data), encoding="utf-8")

    def started(self, pid: int) -> None:
        self.data["pid"] = pid
        self._write()

    def recorded(self) -> None:
        (self.directory / PENDING_NAME).unlink(missing_ok=True)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _record_lost_run(
    ws: Workspace,
    name: str,
    ref: str,
    head: str,
    number: int,
    base: str | None,
    checkpoint_dir: Path,
) -> str | None:
    """Record run ``number`` as lost if it started and was never recorded; the new head."""
    run_dir = ws.runs_dir(name) / f"{number:03d}"
    log = run_dir / LOG_NAME
    try:
        data = json.loads((run_dir / PENDING_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {"pid": None} if log.exists() else {}  # a log without a description
    except ValueError:
        data = {}
    if not isinstance(data, dict) or "pid" not in data:
        shutil.rmtree(run_dir, ignore_errors=True)  # its command never started
        return None
    started = float(data.get("started", 0.0))
    try:
        ended = log.stat().st_mtime
    except FileNotFoundError:
        ended = started
    data.setdefault("code_commit", head)
    record = _record(
        ws,
        name,
        data,
        number=number,
        status="lost",
        exit_code=None,
        duration=max(0.0, ended - started),
        base=base,
        checkpoint_dir=checkpoint_dir,
        refusal=_read_refusal(run_dir),
        key_metric_mode=(None, "min"),
        hashes=_checkpoint_hashes(ws, name),
        log=str(log),
    )
    commit = _commit_record(ws, ref, head, record, run_message(record))
    (run_dir / PENDING_NAME).unlink(missing_ok=True)
    return commit


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _read_refusal(run_dir: Path) -> str | None:
    try:
        report = json.loads((run_dir / REFUSAL_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return str(report.get("message", "the architecture differs"))


def _checkpoint_hashes(ws: Workspace, name: str) -> CheckpointHashes:
    return CheckpointHashes(ws.state_dir / "cache" / f"digests-{name}.json")


def _record(
    ws: Workspace,
    name: str,
    run: Mapping[str, Any],
    *,
    number: int,
    status: RunStatus,
    exit_code: int | None,
    duration: float,
    base: str | None,
    checkpoint_dir: Path,
    refusal: str | None,
    key_metric_mode: tuple[str | None, str],
    hashes: CheckpointHashes,
    signal_name: str | None = None,
    killed: bool = False,
    log: str | None = None,
) -> RunRecord:
    """The record of a run: what it did itself (its events, its checkpoints), and what is kept."""
    catalog = CheckpointDirectory(checkpoint_dir)
    infos = catalog.infos() if catalog.steps() else []
    valid = [info for info in infos if info.valid]
    checkpoints = [
        CheckpointEntry(i.step, i.path.name, i.size, hashes.of(i.path), dict(i.metrics))
        for i in valid
    ]
    hashes.save()
    architecture = None
    if valid:
        with contextlib.suppress(CheckpointError):
            architecture = catalog.metadata(valid[-1].path).architecture.to_json()
    before = set(run.get("checkpoints_before", []))
    saved = [info for info in valid if info.step not in before]
    events = read_events(checkpoint_dir, start=int(run.get("events_start", 0)))
    final, best, last_step = _metrics(events, saved, key_metric_mode)
    return RunRecord(
        experiment=name,
        number=number,
        run_id=str(run.get("run_id", f"{name}-{number}")),
        status=status,
        exit_code=exit_code,
        command=list(run.get("command", [])),
        host=os.uname().nodename,  # socket.gethostname(), without importing socket
        started=datetime.fromtimestamp(float(run.get("started", 0.0)), UTC).isoformat(
            timespec="seconds"
        ),
        duration_s=duration,
        code_commit=str(run["code_commit"]),
        base=base,
        parent_checkpoint=run.get("parent_checkpoint"),
        fresh=bool(run.get("fresh", False)),
        params=dict(run.get("params", {})),
        last_step=last_step,
        final_metrics=final,
        best_metrics=best,
        architecture=architecture,
        checkpoints=checkpoints,
        refusal=refusal,
        checkpoint_step=max((info.step for info in saved), default=None),
        signal=signal_name,
        killed=killed,
        log=log,
    )


def lower_is_better(metric: str) -> bool:
    """The direction of a metric for "best": losses and errors go down, the rest up."""
    return any(
        word in metric.lower() for word in ("loss", "error", "err", "mse", "mae", "perplexity")
    )


def _metrics(
    events: list[dict[str, Any]], checkpoints: Sequence[Any], key: tuple[str | None, str]
) -> tuple[dict[str, float], dict[str, float], int | None]:
    """Final and best metrics of one run, from its events, else from its checkpoints."""
    series: list[tuple[int, Mapping[str, float]]] = [
        (int(e["step"]), e.get("metrics", {})) for e in events if "step" in e
    ] or [(c.step, c.metrics) for c in checkpoints]
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for _, metrics in series:
        for metric, value in metrics.items():
            final[metric] = value
            lower = key[1] == "min" if metric == key[0] else lower_is_better(metric)
            if metric not in best or (value < best[metric] if lower else value > best[metric]):
                best[metric] = value
    steps = [step for step, _ in series] + [c.step for c in checkpoints]
    return final, best, max(steps) if steps else None


def _commit_record(ws: Workspace, ref: str, head: str, record: RunRecord, message: str) -> str:
    """Commit the record on the branch; if the branch moved meanwhile, on its new head."""
    files = record_files(record)
    for _ in range(3):
        tree = ws.repo.tree_with(head, files)
        commit = ws.repo.commit_tree(tree, [head], message)
        try:
            ws.repo.move_ref(ref, commit, head)
            return commit
        except RefUpdateError:
            current = ws.repo.resolve(ref)
            if current is None:
                raise
            head = current
    raise RefUpdateError(f"{ref} keeps moving; the run record could not be committed")
