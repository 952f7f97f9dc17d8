"""expman: experiments as git branches, checkpoints that restore only into the right model.

Example:
    >>> import expman
    >>> ckpts = expman.CheckpointManager("model_dir")  # doctest: +SKIP
"""

from __future__ import annotations

from expman._architecture import (
    Architecture,
    ArchitectureDiff,
    DtypeChange,
    ShapeChange,
    TensorSpec,
    compare_architectures,
)
from expman._catalog import CheckpointInfo
from expman._errors import (
    ArchitectureMismatchError,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointFormatError,
    CheckpointIndexWarning,
    CheckpointNotFoundError,
    CheckpointSaveFailedError,
    CheckpointWriteError,
    ExpmanError,
    ExpmanWarning,
    ModelConfigChangedWarning,
    PartialRestoreWarning,
    UnsupportedStateError,
)
from expman._format import CheckpointMetadata, TensorRecord, read_metadata
from expman._manager import CheckpointManager, RestoreReport
from expman._policy import CheckpointPolicy
from expman._version import __version__

__all__ = [
    "Architecture",
    "ArchitectureDiff",
    "ArchitectureMismatchError",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointFormatError",
    "CheckpointIndexWarning",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointMetadata",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointSaveFailedError",
    "CheckpointWriteError",
    "DtypeChange",
    "ExpmanError",
    "ExpmanWarning",
    "ModelConfigChangedWarning",
    "PartialRestoreWarning",
    "RestoreReport",
    "ShapeChange",
    "TensorRecord",
    "TensorSpec",
    "UnsupportedStateError",
    "__version__",
    "compare_architectures",
    "read_metadata",
]
