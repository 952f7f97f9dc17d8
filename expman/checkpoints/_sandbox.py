"""HDF5 meets a stranger's file first in a helper process, under a time limit.

HDF5's C library parses a file's structure (superblock, object headers,
B-trees, heaps) before expman can check anything, and on some damaged bytes it
loops forever or crashes the process. So a checkpoint file that this process
neither wrote nor has already seen parsed is first opened by a helper
process (``python -c``, started once and kept; never a fork of this one,
whose other threads may hold HDF5's lock): it runs every check the reader
runs, all but reading tensor bytes, and answers with the metadata or the
expman error. A helper that gives no answer within the time limit is killed,
one that dies is reported, and the file is then a
:class:`CheckpointCorruptError`; the next file gets a fresh helper. Only a
file that passed is opened by HDF5 in this process.

A file is known by its stat identity (device, inode, size, mtime and ctime,
which the kernel sets): a file changed in any way is a stranger again.
``docs/checkpoint-format.md``, "A stranger's file", is the specification.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from expman._errors import (
    CHECKPOINT_REMEDY,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    CheckpointReadError,
)

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "ENV_TIME_LIMIT",
    "StatKey",
    "check_whole",
    "examine",
    "is_sound",
    "serve",
    "start",
    "stat_key",
    "time_limit",
    "vouch",
]

ENV_TIME_LIMIT = "EXPMAN_HDF5_TIME_LIMIT"
DEFAULT_TIME_LIMIT = 10.0
"""Seconds HDF5 may take to parse one file in the helper (``EXPMAN_HDF5_TIME_LIMIT``)."""

_START_LIMIT = 120.0  # for the helper to import h5py: not the file's fault if it is slow
_ERRORS: dict[str, type[CheckpointError]] = {
    cls.__name__: cls
    for cls in (
        CheckpointCorruptError,
        CheckpointFormatError,
        CheckpointNotFoundError,
        CheckpointReadError,
    )
}
# The helper: this expman, whatever sys.path found it, in a fresh interpreter.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from expman.checkpoints._sandbox import serve; serve()"
)

StatKey = tuple[int, int, int, int, int]

_sound: set[StatKey] = set()
_failures: dict[tuple[str, StatKey, bool], tuple[str, str]] = {}  # (path, stat, whole)
_lock = threading.Lock()
_helper: list[_Helper] = []  # the running helper, if any


def stat_key(info: os.stat_result) -> StatKey:
    """The identity a verdict is kept under: any change to the file changes it."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def is_sound(info: os.stat_result) -> bool:
    """Whether HDF5 may parse this file here: this process wrote it, or it passed the helper."""
    return stat_key(info) in _sound


def vouch(info: os.stat_result) -> None:
    """A file this process wrote (and committed) is sound as long as it is unchanged."""
    _sound.add(stat_key(info))


def time_limit() -> float:
    """The helper's time limit per file: ``EXPMAN_HDF5_TIME_LIMIT`` seconds, else 10."""
    try:
        value = float(os.environ.get(ENV_TIME_LIMIT, DEFAULT_TIME_LIMIT))
    except ValueError:
        return DEFAULT_TIME_LIMIT
    return value if value > 0 else DEFAULT_TIME_LIMIT


def examine(path: Path, info: os.stat_result, *, whole: bool = False) -> dict[str, Any]:
    """A stranger's file, checked by the helper: its metadata as JSON, or its expman error.

    ``info`` is the file as this process sees it. With ``whole``, a tensor
    whose storage fails its check fails the file now (else when it is read).
    A verdict against the file is kept while the file is unchanged, so a
    damaged file costs its time limit once.
    """
    key = (str(path), stat_key(info), whole)
    with _lock:
        if key in _failures:
            raise _error(*_failures[key])
        limit = time_limit()
        answer = _ask(path, limit, whole)
        if "metadata" in answer:
            checked = tuple(answer["stat"])
            _sound.add(checked)
            if checked != key[1]:
                raise CheckpointReadError(
                    f"cannot read checkpoint {path} (it was replaced while being checked): "
                    "try again"
                )
            metadata: dict[str, Any] = answer["metadata"]
            return metadata
        if "bug" in answer:  # not an expman error: a bug, raised as one
            raise RuntimeError(f"checking {path}: {answer['bug']}: {answer['message']}")
        _failures[key] = (answer["error"], answer["message"])
        raise _error(answer["error"], answer["message"])


def check_whole(path: Path) -> None:
    """Every check a restore makes before it reads a tensor, all in the helper.

    For a file from elsewhere (a pulled checkpoint) before it is kept: this
    process neither imports nor runs HDF5 for it (the helper also runs the
    checks of the file itself: its type and signature). Tensor checksums are
    left to the restore, which verifies them as it reads.

    Raises:
        CheckpointCorruptError, CheckpointFormatError, CheckpointReadError:
            as a restore of the file would.
    """
    try:
        info = os.stat(path)
    except OSError as error:
        raise CheckpointReadError(
            f"cannot read checkpoint {path} ({error.strerror or error}): "
            "check that it exists and is readable, or move it away"
        ) from error
    examine(path, info, whole=True)


def start() -> None:
    """Start the helper now (it takes about 0.3 s), for files expected soon."""
    with _lock:
        _started()


def _started() -> _Helper:
    if not _helper:
        _helper.append(_Helper())
        atexit.register(_stop)
    return _helper[0]


def _error(kind: str, message: str) -> CheckpointError:
    return _ERRORS.get(kind, CheckpointCorruptError)(message)


def _ask(path: Path, limit: float, whole: bool) -> dict[str, Any]:
    """The helper's answer about ``path``; a timeout or a death becomes an error answer."""
    helper = _started()
    try:
        line = helper.ask(path, limit, whole)
    except BaseException:  # an interrupt (Ctrl-C, an alarm): the helper's state is unknown
        _stop()
        raise
    if line is not None and line:
        try:
            answer: dict[str, Any] = json.loads(line)
        except RecursionError:  # the caller's own stack is nearly full
            detail = "its metadata nests too deeply to be read this deep in the stack"
            message = f"{path} has damaged metadata ({detail}): {CHECKPOINT_REMEDY}"
            return {"error": "CheckpointCorruptError", "message": message}
        return answer
    _stop()
    if line is None:
        detail = f"HDF5 did not finish parsing it within {limit:g} s"
    elif helper.returncode is not None and helper.returncode < 0:
        detail = f"HDF5 crashed parsing it: {_signal_name(-helper.returncode)}"
    else:
        detail = f"HDF5 stopped parsing it: the checking process exited with {helper.returncode}"
    return {
        "error": "CheckpointCorruptError",
        "message": f"{path} is truncated or damaged ({detail}): {CHECKPOINT_REMEDY}",
    }


def _signal_name(number: int) -> str:
    try:
        return f"signal {number}, {signal.Signals(number).name}"
    except ValueError:
        return f"signal {number}"


def _stop() -> None:
    """End the helper, which may still be parsing; the next file starts a fresh one."""
    if _helper:
        _helper.pop().stop()


class _Helper:
    """The helper process: one JSON line in (a path), one JSON line out (the verdict)."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        debug = os.environ.get("EXPMAN_DEBUG") == "1"
        try:
            self.process = subprocess.Popen(
                # -P: not the working directory first on sys.path, where a training
                # repository's own modules (a data.py, an h5py.py) would shadow the helper's
                [sys.executable, "-P", "-c", _BOOT, root],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None if debug else subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches this process, which stops the helper
            )
        except OSError as error:  # not executable, no memory, no process slot, ...
            raise CheckpointReadError(
                f"cannot check checkpoint files: the checking process ({sys.executable}) "
                f"could not start ({error.strerror or error}): check that this Python can "
                "run it, then retry"
            ) from error
        self.returncode: int | None = None
        self._buffer = b""
        ready = self._line(_START_LIMIT)
        if ready != b'{"ready": true}':
            self.stop()
            raise CheckpointReadError(
                f"cannot check checkpoint files: the checking process ({sys.executable}) did "
                f"not start (exit status {self.returncode}); run with EXPMAN_DEBUG=1 to see why"
            )

    def ask(self, path: Path, limit: float, whole: bool) -> bytes | None:
        """The answer line; ``b""`` if the helper died, None if it did not answer in time."""
        request = json.dumps({"path": str(path), "limit": limit, "whole": whole}).encode() + b"\n"
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
        except BrokenPipeError:
            return b""
        return self._line(limit)

    def _line(self, limit: float) -> bytes | None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + limit
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 2**20)
                if not chunk:
                    return b""
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def stop(self) -> None:
        self.process.kill()  # harmless if it has died already: its status is kept
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.returncode = self.process.wait()


def serve() -> None:
    """The helper's loop: a path in, its verdict out, until stdin closes."""
    from expman.checkpoints._format import examine_here

    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else writes to stdout goes to stderr
    # The parent kills a helper that runs over its limit; this ends one whose parent died.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    protocol.write(b'{"ready": true}\n')
    protocol.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        signal.alarm(int(request["limit"]) + 10)
        answer: dict[str, Any]
        try:
            answer = examine_here(Path(request["path"]), whole=request["whole"])
        except CheckpointError as error:
            answer = {"error": type(error).__name__, "message": str(error)}
        except Exception as error:  # reported to the parent, which raises it as a bug
            answer = {"bug": type(error).__name__, "message": str(error)}
        signal.alarm(0)
        protocol.write(json.dumps(answer).encode() + b"\n")
        protocol.flush()
