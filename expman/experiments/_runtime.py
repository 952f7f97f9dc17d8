"""What a training script sees: its run's parameters, directory and metric log.

``expman run`` passes the run to the process in environment variables
(documented in docs/runs.md). Outside ``expman run`` the same calls work on
their own: parameters come from ``expman.toml`` in the current directory, and
checkpoints go to a temporary directory.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from expman._errors import ArchitectureMismatchError, CheckpointError, ConfigError
from expman.experiments._config import CONFIG_NAME, parse_config

__all__ = [
    "EVENTS_NAME",
    "RunEnvironment",
    "current_run",
    "log_metrics",
    "params",
    "read_events",
    "remember_directory",
]

EVENTS_NAME = "events.jsonl"
REFUSAL_NAME = "refusal.json"

ENV_WORKSPACE = "EXPMAN_WORKSPACE"
ENV_EXPERIMENT = "EXPMAN_EXPERIMENT"
ENV_RUN_ID = "EXPMAN_RUN_ID"
ENV_RUN_DIR = "EXPMAN_RUN_DIR"
ENV_CODE_COMMIT = "EXPMAN_CODE_COMMIT"
ENV_CHECKPOINT_DIR = "EXPMAN_CHECKPOINT_DIR"
ENV_PARAMS = "EXPMAN_PARAMS"
ENV_POLICY = "EXPMAN_CHECKPOINT_POLICY"
ENV_WARM_START = "EXPMAN_WARM_START"
ENV_WARM_START_NAME = "EXPMAN_WARM_START_NAME"
ENV_PARTIAL = "EXPMAN_PARTIAL_RESTORE"
ENV_DEBUG = "EXPMAN_DEBUG"


@dataclass(frozen=True)
class RunEnvironment:
    """The run this process belongs to, as ``expman run`` described it."""

    workspace: Path
    experiment: str
    run_id: str
    run_dir: Path
    code_commit: str
    checkpoint_dir: Path
    params: Mapping[str, Any]
    policy: Mapping[str, Any]
    warm_start: Path | None
    warm_start_name: str | None
    partial: bool

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_WORKSPACE: str(self.workspace),
            ENV_EXPERIMENT: self.experiment,
            ENV_RUN_ID: self.run_id,
            ENV_RUN_DIR: str(self.run_dir),
            ENV_CODE_COMMIT: self.code_commit,
            ENV_CHECKPOINT_DIR: str(self.checkpoint_dir),
            ENV_PARAMS: json.dumps(self.params),
            ENV_POLICY: json.dumps(self.policy),
            ENV_PARTIAL: "1" if self.partial else "0",
        }
        if self.warm_start is not None:
            env[ENV_WARM_START] = str(self.warm_start)
            env[ENV_WARM_START_NAME] = self.warm_start_name or str(self.warm_start)
        return env


def current_run() -> RunEnvironment | None:
    """The run this process was started by, or None outside ``expman run``."""
    run_id = os.environ.get(ENV_RUN_ID)
    return None if run_id is None else _run_from_environment(run_id)


@functools.cache
def _run_from_environment(run_id: str) -> RunEnvironment:
    # Parsed once per run: log_metrics calls current_run() at every step.
    env = os.environ
    warm = env.get(ENV_WARM_START)
    return RunEnvironment(
        workspace=Path(env[ENV_WORKSPACE]),
        experiment=env[ENV_EXPERIMENT],
        run_id=run_id,
        run_dir=Path(env[ENV_RUN_DIR]),
        code_commit=env[ENV_CODE_COMMIT],
        checkpoint_dir=Path(env[ENV_CHECKPOINT_DIR]),
        params=json.loads(env.get(ENV_PARAMS, "{}")),
        policy=json.loads(env.get(ENV_POLICY, "{}")),
        warm_start=Path(warm) if warm else None,
        warm_start_name=env.get(ENV_WARM_START_NAME),
        partial=env.get(ENV_PARTIAL) == "1",
    )


def params() -> dict[str, Any]:
    """This run's parameters: ``[params]`` of the experiment's ``expman.toml``.

    Outside ``expman run``, ``expman.toml`` in the current directory is read.

    Example:
        >>> hidden_units = expman.params()["model"]["hidden_units"]  # doctest: +SKIP
    """
    run = current_run()
    if run is not None:
        return dict(run.params)
    path = Path.cwd() / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no {CONFIG_NAME} in {Path.cwd()} and not started by expman run: run the "
            "script from the workspace root, or through expman run"
        ) from None
    return dict(parse_config(text, str(path)).params)


_directories: list[Path] = []


def remember_directory(directory: Path) -> None:
    """Called by each CheckpointManager: log_metrics writes beside its checkpoints."""
    _directories.append(directory)


def log_metrics(step: int, **metrics: float) -> None:
    """Append metrics at ``step`` to the run's event log (``events.jsonl``).

    The log sits in the checkpoint directory: the run's, else that of the last
    CheckpointManager created in this process. ``expman show``, ``log`` and
    ``compare`` read it. With the ``tensorboard`` extra installed, the metrics
    are also written as TensorBoard event files in the same directory.

    Example:
        >>> expman.log_metrics(200, loss=0.081, accuracy=0.97)  # doctest: +SKIP
    """
    run = current_run()
    if run is not None:
        directory = run.checkpoint_dir
    elif _directories:
        directory = _directories[-1]
    else:
        raise ConfigError(
            "log_metrics needs a checkpoint directory: create an expman.CheckpointManager "
            "first, or run the script with expman run"
        )
    values = _floats(metrics)
    event = {"step": int(step), "time": time.time(), "metrics": values}
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / EVENTS_NAME, "a", encoding="utf-8") as log:
        log.write(json.dumps(event, allow_nan=True) + "\n")
    writer = _tensorboard_writer(directory)
    if writer is not None:
        for name, value in values.items():
            writer.add_scalar(name, value, int(step))


_writers: dict[Path, Any] = {}


def _tensorboard_writer(directory: Path) -> Any:
    """A TensorBoard event writer for ``directory``, if tensorboardX is installed.

    tensorboardX (the ``tensorboard`` extra) writes the event format, so that
    ``tensorboard --logdir`` shows the metrics with no extra code. It writes
    in the background every 10 seconds; the writers are closed (everything
    written) when the process exits.
    """
    if directory not in _writers:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            _writers[directory] = None
        else:
            if not _writers:
                atexit.register(_close_writers)
            _writers[directory] = SummaryWriter(logdir=str(directory), flush_secs=10)
    return _writers[directory]


def _close_writers() -> None:
    for writer in _writers.values():
        if writer is not None:
            writer.close()


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    try:
        return {name: float(value) for name, value in metrics.items()}
    except (TypeError, ValueError) as error:
        raise TypeError(f"metrics must be numbers: {error}") from error


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every event of a checkpoint directory's log; a torn last line is skipped."""
    try:
        lines = (directory / EVENTS_NAME).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def record_refusal(error: ArchitectureMismatchError) -> None:
    """Under ``expman run``: leave the refusal for expman to report, without a traceback."""
    run = current_run()
    if run is None:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "message": str(error),
        "checkpoint": error.checkpoint,
        "differences": error.diff.lines(),
    }
    (run.run_dir / REFUSAL_NAME).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if os.environ.get(ENV_DEBUG) != "1":
        sys.excepthook = _clean_expman_errors


# The exit code of a checkpoint error (docs/cli.md), for a script that expman runs.
EXIT_CHECKPOINT_ERROR = 8


def report_checkpoint_errors() -> None:
    """Under ``expman run``: an uncaught checkpoint error ends the script as expman's own do.

    One line on stderr (``expman: error: ...``) and exit code 8, not a traceback
    and exit 1, unless EXPMAN_DEBUG=1 or the script installed its own hook.
    """
    if (
        current_run() is not None
        and os.environ.get(ENV_DEBUG) != "1"
        and sys.excepthook is sys.__excepthook__
    ):
        sys.excepthook = _clean_expman_errors


def _clean_expman_errors(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    if isinstance(error, CheckpointError):
        sys.stdout.flush()
        print(f"expman: error: {error}", file=sys.stderr, flush=True)
        os._exit(EXIT_CHECKPOINT_ERROR)
    if not isinstance(error, ArchitectureMismatchError):
        sys.__excepthook__(kind, error, traceback)
        return
    # expman run prints the refusal (from refusal.json) and exits 3 itself.
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(3)
