"""Exceptions and warnings raised by expman.

Every error expman raises on purpose derives from :class:`ExpmanError`, and its
message is one line that says what is wrong and what to do (an architecture
mismatch adds one line per difference). Where it helps callers, an error also
subclasses the builtin a Python programmer would catch::

    ExpmanError
    ├── UsageError (ValueError)                bad names, --set values, config files
    │   ├── InvalidNameError
    │   ├── InvalidAssignmentError
    │   └── ConfigError
    ├── RepositoryError                        not a git repo, no commits, no identity, ...
    ├── ExperimentNotFoundError (LookupError)
    ├── ExperimentExistsError
    ├── ExperimentLockedError                  another run of the experiment is running
    ├── CommandNotFoundError                   the run's command does not exist
    ├── UnsupportedStateError (TypeError)     a state value that cannot be stored
    ├── ArchitectureMismatchError (ValueError) checkpoint and model differ
    └── CheckpointError
        ├── CheckpointNotFoundError (LookupError)
        ├── CheckpointExistsError (FileExistsError)
        ├── CheckpointCorruptError             truncated, not HDF5, checksum mismatch
        ├── CheckpointFormatError              not expman's, future version, links, external data
        ├── CheckpointReadError (OSError)      missing, unreadable, not a regular file
        ├── CheckpointWriteError (OSError)     full disk, read-only directory, ...
        └── CheckpointSaveFailedError          an asynchronous save failed earlier

    ExpmanWarning (UserWarning)
    ├── PartialRestoreWarning                  tensors were skipped by a partial restore
    ├── ModelConfigChangedWarning              same tensors, different model config
    ├── CheckpointIndexWarning                 damaged index, fell back to a scan
    └── CheckpointSkippedWarning               a ckpt-*.h5 that is not a regular file
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expman.checkpoints._architecture import ArchitectureDiff

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointFormatError",
    "CheckpointIndexWarning",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "CheckpointSaveFailedError",
    "CheckpointSkippedWarning",
    "CheckpointWriteError",
    "CommandNotFoundError",
    "ConfigError",
    "ExperimentExistsError",
    "ExperimentLockedError",
    "ExperimentNotFoundError",
    "ExpmanError",
    "ExpmanWarning",
    "InvalidAssignmentError",
    "InvalidNameError",
    "ModelConfigChangedWarning",
    "PartialRestoreWarning",
    "RepositoryError",
    "UnsupportedStateError",
    "UsageError",
]


class ExpmanError(Exception):
    """Base class of every error expman raises on purpose."""


class UsageError(ExpmanError, ValueError):
    """Input that cannot be used as given: a name, a ``--set``, a config file."""


class InvalidNameError(UsageError):
    """An experiment name git would refuse, or that could escape a directory."""


class InvalidAssignmentError(UsageError):
    """A ``--set KEY=VALUE`` that does not parse."""


class ConfigError(UsageError):
    """``expman.toml`` is missing, unreadable or invalid."""


class RepositoryError(ExpmanError):
    """The git repository cannot be used: not a repository, no commits, no identity, ..."""


class ExperimentNotFoundError(ExpmanError, LookupError):
    """No experiment (branch) of that name."""


class ExperimentExistsError(ExpmanError):
    """An experiment of that name already exists."""


class ExperimentLockedError(ExpmanError):
    """Another run of the same experiment holds its lock."""


class CommandNotFoundError(ExpmanError):
    """The command a run should execute is missing or cannot be started."""


class UnsupportedStateError(ExpmanError, TypeError):
    """A state holds a value expman does not store (objects are never pickled)."""


class CheckpointError(ExpmanError):
    """Base class of errors about a checkpoint file or directory."""


class CheckpointNotFoundError(CheckpointError, LookupError):
    """The requested checkpoint does not exist."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A checkpoint for this step is already committed; it is never overwritten."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file is truncated, not HDF5, or fails its checksum."""


class CheckpointFormatError(CheckpointError):
    """A file that breaks the checkpoint format: foreign, too new, or hostile.

    Links, external or virtual storage, dtypes, sizes or attributes that the
    format does not allow (docs/checkpoint-format.md lists what a reader checks).
    """


class CheckpointReadError(CheckpointError, OSError):
    """A checkpoint file or directory cannot be read: missing, no permission, not a file."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (full disk, read-only directory, ...).

    Nothing was committed and every earlier checkpoint is intact.
    """


class CheckpointSaveFailedError(CheckpointError):
    """An asynchronous save failed; raised at the next call and at ``close()``."""


class ArchitectureMismatchError(ExpmanError, ValueError):
    """A checkpoint's recorded architecture differs from the model's.

    Raised before any tensor is read, so the model is left untouched. The
    message lists every difference; the same information is in :attr:`diff`.

    Attributes:
        diff: the differences, tensor by tensor.
        checkpoint: the checkpoint file's path.
        experiment: the experiment that wrote the checkpoint, when recorded.
        code_commit: the commit that wrote the checkpoint, when recorded.
    """

    def __init__(
        self,
        diff: ArchitectureDiff,
        *,
        checkpoint: str,
        experiment: str | None = None,
        code_commit: str | None = None,
    ) -> None:
        self.diff = diff
        self.checkpoint = checkpoint
        self.experiment = experiment
        self.code_commit = code_commit
        super().__init__(self.render())

    @property
    def missing(self) -> Sequence[str]:
        """Tensors the model has and the checkpoint lacks."""
        return self.diff.missing

    @property
    def unexpected(self) -> Sequence[str]:
        """Tensors the checkpoint has and the model lacks."""
        return self.diff.unexpected

    def render(self) -> str:
        origin = [f"experiment {self.experiment}"] if self.experiment else []
        if self.code_commit:
            origin.append(f"commit {self.code_commit[:12]}")
        written_by = f" (written by {', '.join(origin)})" if origin else ""
        count = len(self.diff.lines())
        noun = "difference" if count == 1 else "differences"
        lines = [
            f"checkpoint {self.checkpoint}{written_by} does not match the model: "
            f"{count} tensor {noun}",
            *(f"  {line}" for line in self.diff.lines()),
            "to proceed: restore only the matching tensors with a partial restore "
            "(partial=True, or expman run --partial), or start a new experiment "
            "for the changed model (expman new NAME)",
        ]
        return "\n".join(lines)


class ExpmanWarning(UserWarning):
    """Base class of expman's warnings."""


class PartialRestoreWarning(ExpmanWarning):
    """A partial restore skipped tensors; :attr:`report` says which."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class ModelConfigChangedWarning(ExpmanWarning):
    """The tensors match but the recorded model config differs."""


class CheckpointIndexWarning(ExpmanWarning):
    """The ``checkpoint`` index was missing or damaged; the directory was scanned."""


class CheckpointSkippedWarning(ExpmanWarning):
    """A ``ckpt-*.h5`` entry is not a regular file of the directory; it was never opened."""
