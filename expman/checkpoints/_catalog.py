"""The checkpoint directory: its files, the ``checkpoint`` index and pins.

The files are the truth: a checkpoint exists once its ``ckpt-<step>.h5`` is
renamed into place. The ``checkpoint`` index names the latest and every kept
checkpoint for people and tools (in the Estimator's layout); a missing or
damaged index is reported and the directory scanned instead. A pin is a
``ckpt-<step>.pin`` marker file, so it survives a lost index.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expman._errors import (
    CheckpointError,
    CheckpointIndexWarning,
    CheckpointNotFoundError,
    CheckpointReadError,
    CheckpointSkippedWarning,
)
from expman.checkpoints._durable import fsync_directory, phase, write_text_atomically
from expman.checkpoints._layout import checkpoint_filename, step_of_filename
from expman.checkpoints._sandbox import stat_key, vouch

if TYPE_CHECKING:
    from expman.checkpoints._format import CheckpointMetadata

__all__ = ["INDEX_NAME", "CheckpointDirectory", "CheckpointInfo", "checkpoint_filename"]

INDEX_NAME = "checkpoint"
_INDEX_LINE = re.compile(r'^(model_checkpoint_path|all_model_checkpoint_paths): "(ckpt-\d+\.h5)"$')


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint in a directory.

    Attributes:
        step: the training step.
        path: the file.
        size: its size in bytes.
        wall_time: when it was saved (seconds since the epoch; 0 if unreadable).
        metrics: the metrics saved with it.
        pinned: retention never removes it.
        error: why it cannot be read, or None for a valid checkpoint.
    """

    step: int
    path: Path
    size: int
    wall_time: float
    metrics: Mapping[str, float]
    pinned: bool = False
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


class CheckpointDirectory:
    """Reads and updates one checkpoint directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._metadata: dict[tuple[Any, ...], CheckpointMetadata | CheckpointError] = {}

    def steps(self) -> dict[int, Path]:
        """Every committed checkpoint file, by step.

        Only canonical names count (``ckpt-000005.h5``, not ``ckpt-5.h5``), and
        only regular files of this directory: a FIFO, device, socket, directory,
        dangling symlink or symlink out of the directory is skipped with a
        :class:`CheckpointSkippedWarning`, never opened.
        """
        found = {}
        try:
            entries = list(os.scandir(self.path))
        except OSError as error:
            raise self._unreadable(error) from error
        for entry in entries:
            step = step_of_filename(entry.name)
            if step is None:
                continue
            reason = self._irregular(entry)
            if reason is None:
                found[step] = Path(entry.path)
            else:
                warnings.warn(
                    f"skipped {entry.path}: {reason}; move it away",
                    CheckpointSkippedWarning,
                    stacklevel=3,
                )
        return dict(sorted(found.items()))

    def _irregular(self, entry: os.DirEntry[str]) -> str | None:
        """Why a ``ckpt-*.h5`` entry is not a checkpoint file of this directory, or None."""
        try:
            if entry.is_symlink():
                target = Path(os.path.realpath(entry.path))
                if target.parent != Path(os.path.realpath(self.path)):
                    return "it is a symlink that leaves the checkpoint directory"
            mode = os.stat(entry.path).st_mode
        except FileNotFoundError:
            return "it is a dangling symlink"
        except OSError as error:
            return f"it cannot be examined ({error.strerror or error})"
        if not stat.S_ISREG(mode):
            return "it is not a regular file"
        return None

    def _unreadable(self, error: OSError) -> CheckpointReadError:
        return CheckpointReadError(
            f"cannot read checkpoint directory {self.path} ({error.strerror or error}): "
            "check that it exists and is readable"
        )

    def metadata(self, path: Path) -> CheckpointMetadata:
        """A checkpoint's metadata, cached while the file is unchanged.

        Raises:
            CheckpointNotFoundError: the file was removed meanwhile.
            CheckpointError: the file is damaged, hostile or unreadable.
        """
        try:
            info = path.stat()
        except FileNotFoundError as error:
            raise CheckpointNotFoundError(f"checkpoint {path} was removed meanwhile") from error
        except OSError as error:
            raise CheckpointReadError(
                f"cannot read checkpoint {path} ({error.strerror or error}): "
                "check that it is readable, or move it away"
            ) from error
        key = (str(path), *stat_key(info))
        if key not in self._metadata:
            # Imported here: h5py and numpy take ~0.2 s to import, and listing
            # steps or pins (as the CLI does) must not pay for them.
            from expman.checkpoints._format import read_metadata

            try:
                self._metadata[key] = read_metadata(path)
            except CheckpointError as error:
                self._metadata[key] = error
        cached = self._metadata[key]
        if isinstance(cached, CheckpointError):
            raise cached
        return cached

    def remember(self, metadata: CheckpointMetadata) -> None:
        """Cache the metadata of a checkpoint this process just wrote (no need to read it).

        The file is known sound from then on, while it is unchanged: reading it
        needs no check in the sandbox's helper process (``_sandbox``).
        """
        try:
            info = metadata.path.stat()
        except OSError:  # read it later, if it is still there
            return
        vouch(info)  # HDF5 may parse it in this process while it is unchanged
        self._metadata[(str(metadata.path), *stat_key(info))] = metadata

    def infos(self) -> list[CheckpointInfo]:
        pinned = self.pinned_steps()
        infos = []
        for step, path in self.steps().items():
            try:
                meta = self.metadata(path)
            except CheckpointNotFoundError:
                continue  # removed meanwhile
            except CheckpointError as error:
                infos.append(
                    CheckpointInfo(step, path, _size(path), 0.0, {}, step in pinned, str(error))
                )
                continue
            infos.append(
                CheckpointInfo(step, path, meta.size, meta.wall_time, meta.metrics, step in pinned)
            )
        return infos

    def read_index(self) -> tuple[str | None, list[str]] | None:
        """``(latest, kept)`` file names from the index, or None if it is missing or damaged."""
        try:
            text = (self.path / INDEX_NAME).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        latest, kept = None, []
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            match = _INDEX_LINE.match(line)
            if not match:
                return None
            if match[1] == "model_checkpoint_path":
                latest = match[2]
            else:
                kept.append(match[2])
        return latest, kept

    def latest_step(self, steps: dict[int, Path] | None = None) -> int | None:
        """The newest committed checkpoint's step.

        The index is checked on the way: a directory with checkpoints but a
        missing or damaged index gives a :class:`CheckpointIndexWarning`. A
        checkpoint committed after the index was last written (a crash between
        the two) is still found, since the files are the truth.
        """
        steps = self.steps() if steps is None else steps
        if not steps:
            return None
        index = self.read_index()
        if index is None or index[0] is None or not (self.path / index[0]).exists():
            warnings.warn(
                f"checkpoint index {self.path / INDEX_NAME} is missing or damaged; "
                "found the checkpoints by scanning the directory (the next save rewrites it)",
                CheckpointIndexWarning,
                stacklevel=3,
            )
        return max(steps)

    def write_index(self, latest: int, kept: Iterable[int]) -> None:
        phase("index")
        lines = [
            "# expman checkpoint index: the latest checkpoint and every kept one.",
            "# Rewritten after each save; expman rebuilds it from the files if it is lost.",
            f'model_checkpoint_path: "{checkpoint_filename(latest)}"',
            *(f'all_model_checkpoint_paths: "{checkpoint_filename(s)}"' for s in sorted(kept)),
        ]
        write_text_atomically(self.path / INDEX_NAME, "\n".join(lines) + "\n")

    def remove(self, steps: Iterable[int]) -> None:
        """Delete checkpoints (never a pinned one), then fsync the directory."""
        pinned = self.pinned_steps()
        removed = False
        for step in steps:
            if step in pinned:
                continue
            phase("retention")
            (self.path / checkpoint_filename(step)).unlink(missing_ok=True)
            removed = True
        if removed:
            fsync_directory(self.path)

    def pinned_steps(self) -> set[int]:
        try:
            names = os.listdir(self.path)
        except OSError as error:
            raise self._unreadable(error) from error
        return {
            int(name[5:-4])
            for name in names
            if name.startswith("ckpt-") and name.endswith(".pin") and name[5:-4].isdigit()
        }

    def pin(self, step: int) -> None:
        write_text_atomically(self.path / _pin_name(step), f"{checkpoint_filename(step)}\n")

    def unpin(self, step: int) -> None:
        (self.path / _pin_name(step)).unlink(missing_ok=True)
        fsync_directory(self.path)


def _pin_name(step: int) -> str:
    return f"ckpt-{step:06d}.pin"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
