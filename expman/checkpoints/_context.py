"""The one seam between the checkpoint engine and the run that hosts it.

``expman run`` describes its run to the training process in environment
variables. The checkpoint engine owns the names of the ones it reads and
parses them here, so that it never imports the run layer: a
``CheckpointManager()`` made without a directory takes its directory,
policy, experiment, commit, parameters and warm start from them. Outside
``expman run`` none is set and the engine stands alone.

The other direction is as small: the engine remembers the directories its
managers opened (``log_metrics`` writes beside the last one), and leaves a
refused restore in the file the run names, for ``expman run`` to report.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from expman._errors import ArchitectureMismatchError, CheckpointError

__all__ = [
    "ENV_CHECKPOINT_DIR",
    "ManagerDefaults",
    "leave_refusal",
    "manager_defaults",
    "opened_directories",
    "remember_directory",
    "report_checkpoint_errors",
]

ENV_CHECKPOINT_DIR = "EXPMAN_CHECKPOINT_DIR"
ENV_POLICY = "EXPMAN_CHECKPOINT_POLICY"
ENV_EXPERIMENT = "EXPMAN_EXPERIMENT"
ENV_CODE_COMMIT = "EXPMAN_CODE_COMMIT"
ENV_PARAMS = "EXPMAN_PARAMS"
ENV_WARM_START = "EXPMAN_WARM_START"
ENV_WARM_START_NAME = "EXPMAN_WARM_START_NAME"
ENV_PARTIAL = "EXPMAN_PARTIAL_RESTORE"
ENV_REFUSAL_FILE = "EXPMAN_REFUSAL_FILE"
ENV_DEBUG = "EXPMAN_DEBUG"


@dataclass(frozen=True)
class ManagerDefaults:
    """What a ``CheckpointManager()`` in a run defaults to, as the run described it."""

    directory: Path
    policy: Mapping[str, Any]
    experiment: str
    code_commit: str
    params: Mapping[str, Any]
    warm_start: Path | None = None
    warm_start_name: str | None = None
    partial: bool = False
    refusal_file: Path | None = None

    def to_env(self) -> dict[str, str]:
        """The environment variables that describe these defaults to a child process."""
        env = {
            ENV_CHECKPOINT_DIR: str(self.directory),
            ENV_POLICY: json.dumps(self.policy),
            ENV_EXPERIMENT: self.experiment,
            ENV_CODE_COMMIT: self.code_commit,
            ENV_PARAMS: json.dumps(self.params),
            ENV_PARTIAL: "1" if self.partial else "0",
        }
        if self.warm_start is not None:
            env[ENV_WARM_START] = str(self.warm_start)
            env[ENV_WARM_START_NAME] = self.warm_start_name or str(self.warm_start)
        if self.refusal_file is not None:
            env[ENV_REFUSAL_FILE] = str(self.refusal_file)
        return env


def manager_defaults() -> ManagerDefaults | None:
    """The defaults ``expman run`` gave this process, or None outside a run."""
    directory = os.environ.get(ENV_CHECKPOINT_DIR)
    if directory is None:
        return None
    env = os.environ
    return _parse(
        directory,
        env.get(ENV_POLICY, "{}"),
        env.get(ENV_EXPERIMENT, ""),
        env.get(ENV_CODE_COMMIT, ""),
        env.get(ENV_PARAMS, "{}"),
        env.get(ENV_WARM_START),
        env.get(ENV_WARM_START_NAME),
        env.get(ENV_PARTIAL) == "1",
        env.get(ENV_REFUSAL_FILE),
    )


@functools.cache
def _parse(
    directory: str,
    policy: str,
    experiment: str,
    code_commit: str,
    params: str,
    warm_start: str | None,
    warm_start_name: str | None,
    partial: bool,
    refusal_file: str | None,
) -> ManagerDefaults:
    # Parsed once per run: log_metrics looks at the run at every step.
    return ManagerDefaults(
        directory=Path(directory),
        policy=json.loads(policy),
        experiment=experiment,
        code_commit=code_commit,
        params=json.loads(params),
        warm_start=Path(warm_start) if warm_start else None,
        warm_start_name=warm_start_name,
        partial=partial,
        refusal_file=Path(refusal_file) if refusal_file else None,
    )


_directories: list[Path] = []


def remember_directory(directory: Path) -> None:
    """Called by each CheckpointManager as it opens its directory."""
    _directories.append(directory)


def opened_directories() -> list[Path]:
    """The checkpoint directories this process opened, oldest first."""
    return list(_directories)


def leave_refusal(error: ArchitectureMismatchError) -> None:
    """In a run: leave the refusal for ``expman run`` to report, without a traceback."""
    defaults = manager_defaults()
    if defaults is None or defaults.refusal_file is None:
        return
    defaults.refusal_file.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "message": str(error),
        "checkpoint": error.checkpoint,
        "differences": error.diff.lines(),
    }
    defaults.refusal_file.write_text(json.dumps(report, indent=2), encoding="utf-8")
    report_checkpoint_errors()


# The exit code of a checkpoint error (docs/cli.md), for a script that expman runs.
EXIT_CHECKPOINT_ERROR = 8
EXIT_ARCHITECTURE_MISMATCH = 3


def report_checkpoint_errors() -> None:
    """In a run: an uncaught checkpoint error ends the script as expman's own errors do.

    One line on stderr (``expman: error: ...``) and exit code 8 (3 for a
    refused restore, which ``expman run`` prints from the refusal file), not
    a traceback and exit 1; unless EXPMAN_DEBUG=1 or the script installed its
    own hook.
    """
    if (
        manager_defaults() is not None
        and os.environ.get(ENV_DEBUG) != "1"
        and sys.excepthook in (sys.__excepthook__, _exit_like_expman)
    ):
        sys.excepthook = _exit_like_expman


def _exit_like_expman(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    if isinstance(error, ArchitectureMismatchError):
        code = EXIT_ARCHITECTURE_MISMATCH  # expman run prints the refusal itself
    elif isinstance(error, CheckpointError):
        sys.stdout.flush()
        print(f"expman: error: {error}", file=sys.stderr, flush=True)
        code = EXIT_CHECKPOINT_ERROR
    else:
        sys.__excepthook__(kind, error, traceback)
        return
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)
