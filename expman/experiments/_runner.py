"""``expman run``: execute an experiment's command in a worktree and record the run.

The command runs in a git worktree of the experiment's branch (detached at
the exact commit), so the user can keep editing their checkout. Output goes
to the terminal and to ``.expman/runs/NAME/NNN/output.log``. Whatever the
outcome (success, failure, Ctrl-C, a refused restore), the run is committed on
the branch as a small text record.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from expman._errors import CheckpointError, CheckpointNotFoundError, CommandNotFoundError
from expman.checkpoints._catalog import CheckpointDirectory
from expman.experiments._config import (
    CONFIG_NAME,
    apply_assignments,
    parse_assignment,
    parse_config,
)
from expman.experiments._gitrepo import RefUpdateError
from expman.experiments._names import validate_name
from expman.experiments._records import (
    CheckpointEntry,
    RunRecord,
    RunStatus,
    record_files,
    run_message,
    set_params_message,
)
from expman.experiments._runtime import REFUSAL_NAME, RunEnvironment, read_events
from expman.experiments._workspace import Workspace

__all__ = [
    "RunOptions",
    "RunResult",
    "lower_is_better",
    "parse_checkpoint_spec",
    "run_experiment",
]

EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130


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
) -> RunResult:
    """Run experiment ``name`` and commit its record; return what happened."""
    head = ws.head_of(name)
    ref = str(ws.ref(name))
    with ws.lock(name):
        trailers = ws.latest_trailers(head)
        base = trailers.get("Base") or None
        runs_so_far = int(trailers.get("Runs", "0") or 0)
        text, config = ws.experiment_config(head)
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
        checkpoint_dir = ws.checkpoint_dir(name)
        archived = _archive_checkpoints(ws, name) if options.fresh else None
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        own = CheckpointDirectory(checkpoint_dir).steps()
        if own:
            parent_checkpoint: str | None = f"{name}@{max(own)}"
            warm_start = None  # resuming: the experiment's own checkpoints come first
        else:
            parent_checkpoint = warm_name

        number = runs_so_far + 1
        run_dir = ws.runs_dir(name) / f"{number:03d}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # left by a run that never got recorded
        run_dir.mkdir(parents=True)
        worktree = ws.worktree_dir(name)
        ws.repo.checkout_detached(worktree, head)
        environment = RunEnvironment(
            workspace=ws.root,
            experiment=name,
            run_id=f"{name}-{number}-{secrets.token_hex(3)}",
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
        exit_code = _execute(
            _resolve_command(command),
            worktree,
            {**os.environ, **environment.to_env()},
            run_dir / "output.log",
            stdout or sys.stdout.buffer,
            stderr or sys.stderr.buffer,
        )
        duration = time.time() - started
        refusal = _read_refusal(run_dir)
        status: RunStatus
        if refusal is not None:
            status, exit_code = "refused", EXIT_REFUSED
        elif exit_code == EXIT_INTERRUPTED:
            status = "interrupted"
        else:
            status = "succeeded" if exit_code == 0 else "failed"
        record = _record(
            ws,
            name,
            number=number,
            run_id=environment.run_id,
            status=status,
            exit_code=exit_code,
            command=command,
            started=started,
            duration=duration,
            code_commit=head,
            base=base,
            parent_checkpoint=parent_checkpoint,
            fresh=options.fresh,
            params=config.params,
            checkpoint_dir=checkpoint_dir,
            refusal=refusal,
            key_metric_mode=(config.key_metric, config.key_metric_mode),
        )
        message = run_message(record)
        commit = _commit_record(ws, ref, head, record, message)
    return RunResult(
        experiment=name,
        number=number,
        status=status,
        exit_code=exit_code,
        record_commit=commit,
        code_commit=head,
        log_path=run_dir / "output.log",
        checkpoint_dir=checkpoint_dir,
        subject=message.splitlines()[0],
        refusal=refusal,
        archived_checkpoints=archived,
        changes=tuple(changes),
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
    ws.repo.check_identity()
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


def _archive_checkpoints(ws: Workspace, name: str) -> Path | None:
    """``--fresh``: move the experiment's checkpoints aside (never delete them)."""
    directory = ws.checkpoint_dir(name)
    if not directory.is_dir() or not any(directory.iterdir()):
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = ws.state_dir / "archive" / f"{name}-{stamp}"
    archive.parent.mkdir(parents=True, exist_ok=True)
    directory.rename(archive)
    return archive


def _resolve_command(command: list[str]) -> list[str]:
    """``python`` means the interpreter expman itself runs under (with expman installed)."""
    if command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return command


def _execute(
    command: list[str],
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    stdout: IO[bytes],
    stderr: IO[bytes],
) -> int:
    """Run ``command``, copying its output to the terminal and to ``log_path``."""
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(
                command, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as error:
            reason = error.strerror
            if error.errno == errno.ENOEXEC:
                reason = "it is not a program (a script needs a first line such as #!/bin/sh)"
            raise CommandNotFoundError(
                f"cannot start {command[0]!r}: {reason}; check [run] command in "
                f"{CONFIG_NAME} or the command after --"
            ) from error
        lock = threading.Lock()
        copiers = [
            threading.Thread(target=_copy, args=(source, target, log, lock), daemon=True)
            for source, target in ((process.stdout, stdout), (process.stderr, stderr))
        ]
        for copier in copiers:
            copier.start()
        try:
            code = process.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the whole process group; make sure the
            # command got it too, then let it finish its own shutdown.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            code = EXIT_INTERRUPTED
        for copier in copiers:
            copier.join()
    if code < 0:
        return EXIT_INTERRUPTED if -code == signal.SIGINT else 128 - code
    return code


def _copy(
    source: IO[bytes] | None, target: IO[bytes], log: IO[bytes], lock: threading.Lock
) -> None:
    assert source is not None
    for chunk in iter(lambda: source.read1(65536), b""):  # type: ignore[attr-defined]
        with lock:
            log.write(chunk)
            log.flush()
        with contextlib.suppress(OSError, ValueError):
            target.write(chunk)
            target.flush()


def _read_refusal(run_dir: Path) -> str | None:
    try:
        report = json.loads((run_dir / REFUSAL_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return str(report.get("message", "the architecture differs"))


def _record(
    ws: Workspace,
    name: str,
    *,
    number: int,
    run_id: str,
    status: RunStatus,
    exit_code: int,
    command: list[str],
    started: float,
    duration: float,
    code_commit: str,
    base: str | None,
    parent_checkpoint: str | None,
    fresh: bool,
    params: Mapping[str, Any],
    checkpoint_dir: Path,
    refusal: str | None,
    key_metric_mode: tuple[str | None, str],
) -> RunRecord:
    catalog = CheckpointDirectory(checkpoint_dir)
    infos = catalog.infos() if catalog.steps() else []
    valid = [info for info in infos if info.valid]
    hashes = _FileHashes(ws.state_dir / "cache" / f"sha256-{name}.json")
    checkpoints = [
        CheckpointEntry(i.step, i.path.name, i.size, hashes.of(i.path), dict(i.metrics))
        for i in valid
    ]
    hashes.save()
    architecture = None
    if valid:
        with contextlib.suppress(CheckpointError):
            architecture = catalog.metadata(valid[-1].path).architecture.to_json()
    final, best, last_step = _metrics(read_events(checkpoint_dir), valid, key_metric_mode)
    return RunRecord(
        experiment=name,
        number=number,
        run_id=run_id,
        status=status,
        exit_code=exit_code,
        command=command,
        host=socket.gethostname(),
        started=datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        duration_s=duration,
        code_commit=code_commit,
        base=base,
        parent_checkpoint=parent_checkpoint,
        fresh=fresh,
        params=params,
        last_step=last_step,
        final_metrics=final,
        best_metrics=best,
        architecture=architecture,
        checkpoints=checkpoints,
        refusal=refusal,
    )


def lower_is_better(metric: str) -> bool:
    """The direction of a metric for "best": losses and errors go down, the rest up."""
    return any(
        word in metric.lower() for word in ("loss", "error", "err", "mse", "mae", "perplexity")
    )


def _metrics(
    events: list[dict[str, Any]], checkpoints: Sequence[Any], key: tuple[str | None, str]
) -> tuple[dict[str, float], dict[str, float], int | None]:
    """Final and best metrics, from the event log, else from the checkpoints."""
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


class _FileHashes:
    """sha256 of checkpoint files, cached by name, size and mtime (files never change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.cache: dict[str, list[Any]] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            self.cache = {}

    def of(self, file: Path) -> str:
        stat = file.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        cached = self.cache.get(file.name)
        if cached and cached[:2] == key:
            return str(cached[2])
        with open(file, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        self.cache[file.name] = [*key, digest]
        return digest

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.cache), encoding="utf-8")
