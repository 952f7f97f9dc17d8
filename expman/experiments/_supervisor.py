"""The supervisor: run a command as its own process group, pass it signals, show its output live.

The command runs in a new session (its own process group). SIGINT, SIGTERM
and SIGHUP sent to expman are passed to that whole group; expman then waits
for it, and after a grace period (``EXPMAN_STOP_GRACE_SECS``, 30 s by
default) kills the group with SIGKILL. The command is started with
``PR_SET_PDEATHSIG`` = SIGTERM, so it is told to stop if expman itself dies,
and it inherits the descriptors named in ``keep_fds`` (the experiment's lock),
so the lock lives as long as the command does.

Output is live: when expman's own output is a terminal, the command writes to
a pseudo-terminal (progress bars and colour work as they would directly);
otherwise to a pipe, with ``PYTHONUNBUFFERED=1`` for Python commands. The log
file gets the same bytes, without terminal escape sequences and with lines
overwritten by a carriage return reduced to their final text.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

__all__ = ["FORWARDED_SIGNALS", "Outcome", "grace_seconds", "supervise"]

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ENV_GRACE = "EXPMAN_STOP_GRACE_SECS"
DEFAULT_GRACE = 30.0
_PR_SET_PDEATHSIG = 1
_CHUNK = 65536


@dataclass(frozen=True)
class Outcome:
    """How the command ended."""

    exit_code: int  # the command's, or 128 + N when a signal N ended it
    received: int | None  # the first signal expman received and passed on, if any
    killed: bool  # the group was killed with SIGKILL after the grace period


def grace_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV_GRACE, DEFAULT_GRACE)))
    except ValueError:
        return DEFAULT_GRACE


class _Stop(Exception):
    """Raised by the signal handler to leave an unbounded wait and start the grace period."""


def supervise(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: IO[bytes],
    stdout: IO[bytes],
    stderr: IO[bytes],
    keep_fds: Sequence[int] = (),
    on_start: Callable[[int], None] | None = None,
) -> Outcome:
    """Run ``command`` to its end, copying its output to ``stdout``/``stderr`` and ``log``.

    ``on_start`` is called with the command's pid once it runs. Raises
    ``OSError`` if the command cannot be started.
    """
    streams = _Streams.open(stdout, stderr)
    environment = dict(env)
    if not streams.terminal:
        environment["PYTHONUNBUFFERED"] = "1"
    state = _State()

    def forward(signum: int, _frame: FrameType | None) -> None:
        state.received.append(signum)
        if state.since is None:
            state.since = time.monotonic()
        if state.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(state.pid, signum)
        if state.armed:
            state.armed = False
            raise _Stop

    previous = _install(forward)
    try:
        try:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=environment,
                stdout=streams.child_out,
                stderr=streams.child_err,
                start_new_session=True,
                pass_fds=tuple(keep_fds),
                preexec_fn=_child_setup(terminal=streams.terminal),
            )
        finally:
            streams.close_child_ends()
        state.pid = process.pid
        if state.received:  # a signal came while the command was starting
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, state.received[0])
        if on_start is not None:
            on_start(process.pid)
        copiers = streams.start_copying(log)
        code, killed = _wait(process, state)
        for copier in copiers:
            copier.join()
    finally:
        _restore(previous)
        streams.close()
    if code < 0:
        code = 128 - code
    return Outcome(code, state.received[0] if state.received else None, killed)


class _State:
    """What the signal handler and the waiting loop share."""

    def __init__(self) -> None:
        self.pid = 0
        self.received: list[int] = []
        self.since: float | None = None  # when the first signal came
        self.armed = False  # the handler may raise _Stop: the wait is unbounded


def _wait(process: subprocess.Popen[bytes], state: _State) -> tuple[int, bool]:
    """Wait for the command; once a signal came, at most the grace period, then SIGKILL."""
    killed = False
    while True:
        try:
            state.armed = state.since is None
            timeout = None
            if state.since is not None and not killed:
                timeout = max(0.0, state.since + grace_seconds() - time.monotonic())
            code = process.wait(timeout=timeout)
            state.armed = False
            return code, killed
        except _Stop:
            continue
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            killed = True


def _install(handler: Callable[[int, FrameType | None], None]) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; the command keeps the defaults
    return {signum: signal.signal(signum, handler) for signum in FORWARDED_SIGNALS}


def _restore(previous: Mapping[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]


def _child_setup(*, terminal: bool) -> Callable[[], None]:
    """What the child does between fork and exec: die with expman; take its terminal."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child
    prctl = libc.prctl
    parent = os.getpid()

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # expman died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        if terminal:
            with contextlib.suppress(OSError):
                fcntl.ioctl(1, termios.TIOCSCTTY, 0)

    return setup


class _Streams:
    """Where the command writes: pseudo-terminals when expman's output is a terminal, else pipes."""

    def __init__(
        self, terminal: bool, pairs: list[tuple[int, int]], targets: list[IO[bytes]]
    ) -> None:
        self.terminal = terminal
        self.pairs = pairs  # (expman's end, the command's end) for stdout, stderr
        self.targets = targets
        self.child_out = pairs[0][1]
        self.child_err = pairs[1][1]

    @classmethod
    def open(cls, stdout: IO[bytes], stderr: IO[bytes]) -> _Streams:
        terminal = _isatty(stdout)
        pairs = [
            _terminal_pair(stdout) if terminal else os.pipe(),
            _terminal_pair(stderr) if terminal and _isatty(stderr) else os.pipe(),
        ]
        return cls(terminal, pairs, [stdout, stderr])

    def close_child_ends(self) -> None:
        for _, child in self.pairs:
            with contextlib.suppress(OSError):
                os.close(child)

    def start_copying(self, log: IO[bytes]) -> list[threading.Thread]:
        lock = threading.Lock()
        threads = [
            threading.Thread(target=_copy, args=(ours, target, log, lock), daemon=True)
            for (ours, _), target in zip(self.pairs, self.targets, strict=True)
        ]
        for thread in threads:
            thread.start()
        return threads

    def close(self) -> None:
        for ours, _ in self.pairs:
            with contextlib.suppress(OSError):
                os.close(ours)


def _isatty(stream: IO[bytes]) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _terminal_pair(like: IO[bytes]) -> tuple[int, int]:
    """A pseudo-terminal that passes bytes through unchanged, sized like expman's terminal."""
    master, slave = os.openpty()
    attributes = termios.tcgetattr(slave)
    attributes[1] &= ~termios.OPOST  # no \n -> \r\n: the real terminal does that
    termios.tcsetattr(slave, termios.TCSANOW, attributes)
    with contextlib.suppress(OSError, AttributeError, ValueError):
        size = fcntl.ioctl(like.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    return master, slave


def _copy(source: int, target: IO[bytes], log: IO[bytes], lock: threading.Lock) -> None:
    cleaner = LogCleaner()
    while True:
        try:
            chunk = os.read(source, _CHUNK)
        except OSError:  # EIO: every writer of the pseudo-terminal is gone
            chunk = b""
        if not chunk:
            break
        with contextlib.suppress(OSError, ValueError):
            target.write(chunk)
            target.flush()
        _write_log(log, lock, cleaner.feed(chunk))
    _write_log(log, lock, cleaner.finish())


def _write_log(log: IO[bytes], lock: threading.Lock, data: bytes) -> None:
    if data:
        with lock:
            log.write(data)
            log.flush()


_ESCAPE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: window titles, links
    rb"|\x1b[@-Z\\-_]"  # other two-byte escapes
)
_MAX_PENDING = 1 << 20


class LogCleaner:
    """Terminal output -> log text: escapes removed, ``\\r``-overwritten text dropped.

    Works on whole lines, so an escape split across reads is still removed; a
    line still being redrawn (a progress bar) keeps only its latest version.
    """

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        self.pending += data
        head, newline, tail = self.pending.rpartition(b"\n")
        if not newline:
            cut = self.pending.rfind(b"\r", 0, len(self.pending) - 1)
            if cut >= 0:
                self.pending = self.pending[cut + 1 :]
            if len(self.pending) > _MAX_PENDING:
                return self.finish()
            return b""
        self.pending = tail
        return b"".join(_clean_line(line) + b"\n" for line in head.split(b"\n"))

    def finish(self) -> bytes:
        rest, self.pending = self.pending, b""
        return _clean_line(rest) if rest else b""


def _clean_line(line: bytes) -> bytes:
    line = _ESCAPE.sub(b"", line).rstrip(b"\r")
    return line.rpartition(b"\r")[2]
