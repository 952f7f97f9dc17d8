"""Durable file operations: temporary names, fsync, atomic rename.

Every file expman commits is written under a temporary name in the same
directory, fsynced, renamed into place, and the directory fsynced, so that a
crash at any instant leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "allocate",
    "commit_file",
    "describe_os_error",
    "fsync_directory",
    "fsync_file",
    "phase",
    "read_at",
    "remove_stale_temporaries",
    "reserve_space",
    "temporary_path",
    "write_at",
    "write_text_atomically",
]

# A test seam: called with the name of each durability phase as it starts, so
# crash tests can kill the process at an exact point. None in normal use.
phase_hook: Callable[[str], None] | None = None

_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def phase(name: str) -> None:
    if phase_hook is not None:
        phase_hook(name)


def temporary_path(final: Path) -> Path:
    """A hidden name beside ``final`` that records the writing process."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(temporary: Path, final: Path, *, replace: bool = True) -> None:
    """fsync ``temporary``, rename it to ``final`` and fsync the directory.

    With ``replace=False`` an existing ``final`` is never replaced, whichever
    process wrote it: ``temporary`` is hard-linked to ``final`` (which fails if
    it exists, atomically) and then unlinked, and ``FileExistsError`` is
    raised if ``final`` exists. Where the filesystem has no hard links,
    ``renameat2(RENAME_NOREPLACE)`` does the same.
    """
    phase("fsync")
    fsync_file(temporary)
    phase("rename")
    if replace:
        os.replace(temporary, final)
    else:
        _rename_no_replace(temporary, final)
    phase("fsync-directory")
    fsync_directory(final.parent)


def _rename_no_replace(temporary: Path, final: Path) -> None:
    try:
        os.link(temporary, final)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        _renameat2_no_replace(temporary, final)
        return
    os.unlink(temporary)


def _renameat2_no_replace(temporary: Path, final: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(
            errno.ENOTSUP, "this system can neither hard-link nor rename without replacing"
        )
    at_fdcwd, rename_noreplace = -100, 1
    result = renameat2(
        at_fdcwd, os.fsencode(temporary), at_fdcwd, os.fsencode(final), rename_noreplace
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(final))


def reserve_space(beside: Path, size: int) -> None:
    """Check that ``size`` bytes fit on the device of ``beside``, before writing there.

    A file of that size is allocated (not written) beside it, then removed: a
    full disk raises ``OSError(ENOSPC)`` here, before any library writes.
    """
    probe = temporary_path(beside)
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _fallocate(fd, size)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def allocate(path: Path, size: int) -> None:
    """Allocate ``size`` bytes for ``path`` so that writes within them cannot meet ENOSPC."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _fallocate(fd, size)
    finally:
        os.close(fd)


def _fallocate(fd: int, size: int) -> None:
    """fallocate(2) itself: glibc's posix_fallocate would write zeros where it is missing."""
    if size <= 0:
        return
    if _libc.fallocate(fd, 0, ctypes.c_int64(0), ctypes.c_int64(size)) == 0:
        return
    code = ctypes.get_errno()
    # A filesystem without fallocate: nothing is reserved, and writes report ENOSPC.
    if code not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise OSError(code, os.strerror(code))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def write_at(fd: int, views: Sequence[memoryview], offset: int) -> None:
    """Write ``views`` one after another from ``offset`` of ``fd``, many per system call."""
    _transfer(os.pwritev, fd, views, offset, "the file accepted no bytes")


def read_at(fd: int, views: Sequence[memoryview], offset: int) -> None:
    """Fill ``views`` one after another from ``offset`` of ``fd``, many per system call."""
    _transfer(os.preadv, fd, views, offset, "the file ends inside a tensor")


def _transfer(
    call: Callable[[int, list[memoryview], int], int],
    fd: int,
    views: Sequence[memoryview],
    offset: int,
    short: str,
) -> None:
    """``pwritev`` or ``preadv`` of every view, up to IOV_MAX at a time, short counts resumed."""
    for start in range(0, len(views), _IOV_MAX):
        pending = [view for view in views[start : start + _IOV_MAX] if view.nbytes]
        while pending:
            count = call(fd, pending, offset)
            if count == 0:
                raise OSError(short)
            offset += count
            while pending and count >= pending[0].nbytes:
                count -= pending.pop(0).nbytes
            if count:
                pending[0] = pending[0][count:]


_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def write_text_atomically(path: Path, text: str) -> None:
    temporary = temporary_path(path)
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        commit_file(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary files left by writers that no longer run; return them.

    A temporary file of a live process (this one included) is left alone, so
    a concurrent writer is never disturbed.
    """
    removed = []
    for entry in os.scandir(directory):
        match = _TEMPORARY.match(entry.name)
        if match and not _process_alive(int(match["pid"])):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_os_error(error: OSError) -> str:
    """A short reason and remedy for the OS errors a checkpoint write meets."""
    code = error.errno or _errno_from_text(str(error))
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device: free some space, then save again"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the directory is not writable: fix its permissions or choose another directory"
    return f"{error.strerror or error}: fix the cause, then save again"


def _errno_from_text(text: str) -> int | None:
    # HDF5 reports the errno of a failed write inside its message, not as errno.
    match = re.search(r"errno = (\d+)", text)
    return int(match[1]) if match else None
