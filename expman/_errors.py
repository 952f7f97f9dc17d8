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
    ├── QueueError                             a queue entry in the wrong state, no Dask
    ├── UnsupportedStateError (TypeError)     a state value that cannot be stored
    ├── WriteError (OSError)                   a file or git object cannot be written
    ├── ArchitectureMismatchError (ValueError) checkpoint and model differ
    ├── RemoteError                            push/pull: store or git remote unusable
    │   └── RemoteIntegrityError               a pulled file or manifest is not what it should be
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
    ├── FreshStateWarning                      a part given to restore is not in the checkpoint
    ├── LastStepNotSavedWarning                close() did not save a state changed after save()
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
    "FreshStateWarning",
    "InvalidAssignmentError",
    "InvalidNameError",
    "LastStepNotSavedWarning",
    "ModelConfigChangedWarning",
    "PartialRestoreWarning",
    "QueueError",
    "RemoteError",
    "RemoteIntegrityError",
    "RepositoryError",
    "UnsupportedStateError",
    "UsageError",
    "WriteError",
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


class QueueError(ExpmanError):
    """The run queue cannot do that: an entry in the wrong state, or Dask missing."""


class UnsupportedStateError(ExpmanError, TypeError):
    """A state holds a value expman does not store (objects are never pickled)."""


class WriteError(ExpmanError, OSError):
    """A file or git object cannot be written: full disk, read-only or missing directory.

    Checkpoints raise :class:`CheckpointWriteError` instead.
    """


class CheckpointError(ExpmanError):
    """Base class of errors about a checkpoint file or directory."""


class CheckpointNotFoundError(CheckpointError, LookupError):
    """The requested checkpoint does not exist."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A checkpoint for this step is already committed; it is never overwritten."""


CHECKPOINT_REMEDY = "restore another step, or move the file away"
"""What a message about a damaged or refused checkpoint file ends with."""


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
        state_differences: other differences (tied tensors, the optimizer, the
            scheduler, extra state), one line each, starting with what they
            concern (``optimizer: ...``, ``lr_scheduler: ...``, ``extra scaler: ...``).
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
        state_differences: Sequence[str] = (),
    ) -> None:
        self.diff = diff
        self.state_differences = tuple(state_differences)
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
        counts = [f"{count} tensor {_plural(count, 'difference')}"] if count else []
        if self.state_differences:
            others = len(self.state_differences)
            counts.append(f"{others} other {_plural(others, 'difference')}")
        lines = [
            f"checkpoint {self.checkpoint}{written_by} does not match the model: "
            + ", ".join(counts or [f"{count} tensor differences"]),
            *(f"  {line}" for line in self.diff.lines()),
            *(f"  {line}" for line in self.state_differences),
            "to proceed: restore only the matching tensors with a partial restore "
            "(partial=True, or expman run --partial), or start a new experiment "
            "for the changed model (expman new NAME)",
        ]
        return "\n".join(lines)


class RemoteError(ExpmanError):
    """``expman push/pull``: a store or git remote that cannot be reached or used."""


class RemoteIntegrityError(RemoteError):
    """A pulled file differs from its record's digest, or a manifest is missing or damaged."""


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


class ExpmanWarning(UserWarning):
    """Base class of expman's warnings."""


class PartialRestoreWarning(ExpmanWarning):
    """A partial restore skipped tensors; :attr:`report` says which."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class FreshStateWarning(ExpmanWarning):
    """A restore was given a part (optimizer, scheduler, extra state) the checkpoint lacks.

    That part keeps its state as built: it starts fresh.
    """


class LastStepNotSavedWarning(ExpmanWarning):
    """``close()`` did not save the last step: its state changed after ``save()``.

    A checkpoint labelled step N holds the state as of step N; pass
    ``last=True`` to the ``save()`` of the last step to write it then.
    """


class ModelConfigChangedWarning(ExpmanWarning):
    """The tensors match but the recorded model config differs."""


class CheckpointIndexWarning(ExpmanWarning):
    """The ``checkpoint`` index was missing or damaged; the directory was scanned."""


class CheckpointSkippedWarning(ExpmanWarning):
    """A ``ckpt-*.h5`` entry is not a regular file of the directory; it was never opened."""
