"""expman: experiments as git branches, checkpoints that restore only into the right model.

Submodules load on first use (PEP 562), so that ``import expman`` and the
command line stay fast: numpy and h5py are imported only when a checkpoint is.

Example:
    >>> import expman
    >>> params = expman.params()  # doctest: +SKIP
    >>> ckpts = expman.CheckpointManager()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from expman._version import __version__

if TYPE_CHECKING:
    from expman._errors import (
        ArchitectureMismatchError,
        CheckpointCorruptError,
        CheckpointError,
        CheckpointExistsError,
        CheckpointFormatError,
        CheckpointIndexWarning,
        CheckpointNotFoundError,
        CheckpointReadError,
        CheckpointSaveFailedError,
        CheckpointSkippedWarning,
        CheckpointWriteError,
        CommandNotFoundError,
        ConfigError,
        ExperimentExistsError,
        ExperimentLockedError,
        ExperimentNotFoundError,
        ExpmanError,
        ExpmanWarning,
        FreshStateWarning,
        InvalidAssignmentError,
        InvalidNameError,
        LastStepNotSavedWarning,
        ModelConfigChangedWarning,
        PartialRestoreWarning,
        QueueError,
        RemoteError,
        RemoteIntegrityError,
        RepositoryError,
        UnsupportedStateError,
        UsageError,
        WriteError,
    )
    from expman.checkpoints._architecture import (
        Architecture,
        ArchitectureDiff,
        DtypeChange,
        ShapeChange,
        TensorSpec,
        compare_architectures,
    )
    from expman.checkpoints._catalog import CheckpointInfo
    from expman.checkpoints._format import CheckpointMetadata, TensorRecord, read_metadata
    from expman.checkpoints._manager import CheckpointManager, RestoreReport
    from expman.checkpoints._policy import CheckpointPolicy
    from expman.checkpoints._state import Bits
    from expman.experiments._runner import RunOptions, RunResult, run_experiment
    from expman.experiments._runtime import current_run, log_metrics, params
    from expman.experiments._workspace import Workspace

_LOCATIONS = {
    "checkpoints._architecture": [
        "Architecture",
        "ArchitectureDiff",
        "DtypeChange",
        "ShapeChange",
        "TensorSpec",
        "compare_architectures",
    ],
    "checkpoints._catalog": ["CheckpointInfo"],
    "_errors": [
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
    ],
    "checkpoints._format": ["CheckpointMetadata", "TensorRecord", "read_metadata"],
    "checkpoints._manager": ["CheckpointManager", "RestoreReport"],
    "checkpoints._policy": ["CheckpointPolicy"],
    "experiments._runner": ["RunOptions", "RunResult", "run_experiment"],
    "experiments._runtime": ["current_run", "log_metrics", "params"],
    "checkpoints._state": ["Bits"],
    "experiments._workspace": ["Workspace"],
}
_MODULE_OF = {name: module for module, names in _LOCATIONS.items() for name in names}

__all__ = sorted([*_MODULE_OF, "__version__"])


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'expman' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"expman.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
