"""Exit codes: one per kind of error, so scripts can tell them apart (docs/cli.md)."""

from __future__ import annotations

from expman._errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    CommandNotFoundError,
    ConfigError,
    ExperimentExistsError,
    ExperimentLockedError,
    ExperimentNotFoundError,
    ExpmanError,
    InvalidAssignmentError,
    InvalidNameError,
    RemoteError,
    RemoteIntegrityError,
    RepositoryError,
    UsageError,
    WriteError,
)

__all__ = ["EXIT_CODES", "EXIT_USAGE", "exit_code_for"]

EXIT_USAGE = 2

# Most specific first: the first class an error is an instance of decides.
EXIT_CODES: list[tuple[type[ExpmanError], int, str]] = [
    (ArchitectureMismatchError, 3, "a checkpoint's architecture differs from the model's"),
    (RepositoryError, 4, "not a git repository, no commits, no identity, detached HEAD"),
    (ExperimentNotFoundError, 5, "no such experiment (or revision)"),
    (CheckpointNotFoundError, 5, "no such checkpoint"),
    (ExperimentExistsError, 6, "the experiment already exists"),
    (ExperimentLockedError, 7, "the experiment is already running"),
    (CheckpointError, 8, "a checkpoint is damaged, foreign or cannot be written"),
    (InvalidNameError, 9, "an invalid experiment name"),
    (InvalidAssignmentError, 10, "an invalid --set KEY=VALUE"),
    (ConfigError, 11, "expman.toml is missing or invalid"),
    (UsageError, EXIT_USAGE, "a bad option or argument"),
    (WriteError, 13, "a file or git object cannot be written: full disk, missing directory"),
    (RemoteIntegrityError, 14, "a pulled file or manifest does not match its record"),
    (RemoteError, 15, "the object store or git remote cannot be used"),
    (CommandNotFoundError, 127, "the run's command cannot be started"),
    (ExpmanError, 1, "any other error expman reports"),
]


def exit_code_for(error: ExpmanError) -> int:
    for kind, code, _ in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return 1
