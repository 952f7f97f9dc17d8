"""What a training script sees: its run's parameters, directory and metric log.

``expman run`` passes the run to the process in environment variables
(documented in docs/runs.md). Outside ``expman run`` the same calls work on
their own: parameters come from ``expman.toml`` in the current directory, and
checkpoints go to a temporary directory.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expman._errors import ConfigError
from expman._json import dumps
from expman._text import refuse_control_characters
from expman.checkpoints._context import ManagerDefaults, manager_defaults, opened_directories
from expman.experiments._config import CONFIG_NAME, parse_config

__all__ = [
    "EVENTS_NAME",
    "RunEnvironment",
    "current_run",
    "events_size",
    "log_metrics",
    "params",
    "read_events",
]

EVENTS_NAME = "events.jsonl"
REFUSAL_NAME = "refusal.json"

ENV_WORKSPACE = "EXPMAN_WORKSPACE"
ENV_RUN_ID = "EXPMAN_RUN_ID"
ENV_RUN_DIR = "EXPMAN_RUN_DIR"


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
        """The environment of the run's process: the run, and the checkpoint defaults."""
        defaults = ManagerDefaults(
            directory=self.checkpoint_dir,
            policy=self.policy,
            experiment=self.experiment,
            code_commit=self.code_commit,
            params=self.params,
            warm_start=self.warm_start,
            warm_start_name=self.warm_start_name,
            partial=self.partial,
            refusal_file=self.run_dir / REFUSAL_NAME,
        )
        return {
            ENV_WORKSPACE: str(self.workspace),
            ENV_RUN_ID: self.run_id,
            ENV_RUN_DIR: str(self.run_dir),
            **defaults.to_env(),
        }


def current_run() -> RunEnvironment | None:
    """The run this process was started by, or None outside ``expman run``."""
    run_id = os.environ.get(ENV_RUN_ID)
    defaults = manager_defaults()
    if run_id is None or defaults is None:
        return None
    return RunEnvironment(
        workspace=Path(os.environ.get(ENV_WORKSPACE, "")),
        experiment=defaults.experiment,
        run_id=run_id,
        run_dir=Path(os.environ.get(ENV_RUN_DIR, "")),
        code_commit=defaults.code_commit,
        checkpoint_dir=defaults.directory,
        params=defaults.params,
        policy=defaults.policy,
        warm_start=defaults.warm_start,
        warm_start_name=defaults.warm_start_name,
        partial=defaults.partial,
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


def log_metrics(step: int, **metrics: float) -> None:
    """Append metrics at ``step`` to the run's event log (``events.jsonl``).

    The log sits in the checkpoint directory: the run's, else that of the last
    CheckpointManager created in this process. ``expman show``, ``log`` and
    ``compare`` read it. Names with a control character (a newline, a tab) are
    refused (``UsageError``): they could forge lines of the run's record. NaN
    and infinite values are written as JSON ``null``. With the ``tensorboard``
    extra installed, the metrics are also written as TensorBoard event files
    in the same directory.

    Example:
        >>> expman.log_metrics(200, loss=0.081, accuracy=0.97)  # doctest: +SKIP
    """
    run = current_run()
    if run is not None:
        directory = run.checkpoint_dir
    elif opened := opened_directories():
        directory = opened[-1]
    else:
        raise ConfigError(
            "log_metrics needs a checkpoint directory: create an expman.CheckpointManager "
            "first, or run the script with expman run"
        )
    refuse_control_characters(metrics, "metric")
    values = _floats(metrics)
    event = {"step": int(step), "time": time.time(), "metrics": values}
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / EVENTS_NAME, "a", encoding="utf-8") as log:
        log.write(dumps(event) + "\n")
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


def events_size(directory: Path) -> int:
    """The size of a checkpoint directory's event log: where a new run's events will start."""
    try:
        return (directory / EVENTS_NAME).stat().st_size
    except FileNotFoundError:
        return 0


def read_events(directory: Path, *, start: int = 0) -> list[dict[str, Any]]:
    """The events of a checkpoint directory's log from byte ``start``; torn lines are skipped."""
    try:
        with open(directory / EVENTS_NAME, "rb") as log:
            log.seek(start)
            lines = log.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
