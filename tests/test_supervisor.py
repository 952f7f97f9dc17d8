"""``expman run`` as a supervisor: real processes, real signals, a real pseudo-terminal.

Every wait is for a file a process writes (never a blind sleep) and is bounded.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cli import EXPMAN, expman
from tests.conftest import git

SUPERVISED = '''\
"""Waits for the test, tells it what it saw: ready, signals, its own pid."""
import os, pathlib, signal, subprocess, sys, time

flags = pathlib.Path(os.environ["FLAGS"])
mode = sys.argv[1]


def note(name, text=""):
    (flags / name).write_text(text)


def handler(signum, frame):
    note("got-" + signal.Signals(signum).name)
    if mode != "stubborn":
        sys.exit(0)


for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, handler)
if mode == "group":
    child = subprocess.Popen(["sleep", "120"])
    note("grandchild", str(child.pid))
note("ready", str(os.getpid()))
deadline = time.monotonic() + 120
while not (flags / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
'''

TALKER = '''\
"""Prints a line, then waits until the test has seen it: buffered output deadlocks (bounded)."""
import os, pathlib, sys, time

acks = pathlib.Path(os.environ["ACKS"])
print(f"isatty={sys.stdout.isatty()}")
print("\\x1b[32mgreen\\x1b[0m")
print("progress  10%\\rprogress 100%")
for i in range(5):
    print(f"line {i}")
    deadline = time.monotonic() + 10
    while not (acks / str(i)).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not (acks / str(i)).exists():
        sys.exit(f"line {i} was not seen while the command ran")
    time.sleep(0.5)
'''


def wait_for(condition: object, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def lock_is_free(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPMAN_")}
    env.pop("PYTHONUNBUFFERED", None)  # a user's shell does not set it
    return {**env, **extra}


@pytest.fixture
def flags(tmp_path: Path) -> Path:
    path = tmp_path / "flags"
    path.mkdir()
    return path


def start(workspace: Path, flags: Path, mode: str, **env: str) -> tuple[subprocess.Popen[str], int]:
    """``expman run sup -- python supervised.py MODE``; the command's pid once it is ready."""
    (workspace / "supervised.py").write_text(SUPERVISED)
    if git(workspace, "branch", "--list", "exp/sup") == "":
        assert expman(workspace, "new", "sup").returncode == 0
    process = subprocess.Popen(
        [str(EXPMAN), "run", "sup", "--", "python", "supervised.py", mode],
        cwd=workspace,
        env=environment(FLAGS=str(flags), **env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # only what the test sends reaches expman
    )
    wait_for(lambda: (flags / "ready").exists() and (flags / "ready").read_text())
    return process, int((flags / "ready").read_text())


def trailers(workspace: Path, revision: str = "exp/sup") -> str:
    return git(workspace, "log", "-1", "--format=%(trailers)", revision)


@pytest.mark.parametrize(
    ("sent", "code", "status"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "terminated"),
        (signal.SIGHUP, 129, "terminated"),
    ],
)
def test_a_signal_to_expman_reaches_the_whole_group_and_is_recorded(
    workspace: Path, flags: Path, sent: signal.Signals, code: int, status: str
) -> None:
    process, pid = start(workspace, flags, "group")
    grandchild = int((flags / "grandchild").read_text())
    os.kill(process.pid, sent)  # expman alone, as `kill PID` does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert (flags / f"got-{sent.name}").exists()  # the command got it and saved its work
    wait_for(lambda: not alive(pid) and not alive(grandchild))  # the whole group is gone
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith(
        f"expman: run 1 of sup {status} ({sent.name}, exit {code}): nothing logged or saved; "
        "recorded as "
    )
    assert f"Status: {status}\nExit-Code: {code}\nSignal: {sent.name}\n" in trailers(workspace)
    run = json.loads(git(workspace, "show", "exp/sup:expman-runs/sup/001/run.json"))
    assert (run["status"], run["signal"], run["killed_after_grace"]) == (status, sent.name, False)


def test_a_command_that_ignores_the_signal_is_killed_after_the_grace_period(
    workspace: Path, flags: Path
) -> None:
    process, pid = start(workspace, flags, "stubborn", EXPMAN_STOP_GRACE_SECS="1")
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "expman: run 1 of sup terminated (SIGTERM, exit 143)" in stderr
    assert (flags / "got-SIGTERM").exists()
    assert not alive(pid)
    body = git(workspace, "log", "-1", "--format=%b", "exp/sup")
    assert "The command ignored SIGTERM and was killed with SIGKILL." in body
    run = json.loads(git(workspace, "show", "exp/sup:expman-runs/sup/001/run.json"))
    assert run["killed_after_grace"] is True


def test_expman_killed_first_the_lock_lives_until_its_command_ends_and_the_run_is_lost(
    workspace: Path, flags: Path
) -> None:
    process, pid = start(workspace, flags, "stubborn")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    # PR_SET_PDEATHSIG: the command is told to stop (this one ignores it and goes on).
    wait_for(lambda: (flags / "got-SIGTERM").exists())
    assert alive(pid)
    second = expman(workspace, "run", "sup", "--", "python", "-c", "print('second')")
    assert second.returncode == 7
    assert second.stderr == (
        f"expman: error: experiment sup is still running: its command (pid {pid}) outlived "
        f"expman (pid {process.pid}); wait for it to finish, or stop it (kill {pid})\n"
    )
    assert not (workspace / ".expman" / "runs" / "sup" / "002").exists()
    (flags / "release").write_text("")
    wait_for(lambda: lock_is_free(workspace / ".expman" / "locks" / "sup.lock"))
    third = expman(workspace, "run", "sup", "--", "python", "-c", "print('third')")
    assert third.returncode == 0, third.stderr
    assert "expman: warning: run 1 of sup ended unrecorded; recorded it as lost" in third.stderr
    subjects = git(workspace, "log", "--format=%s", "exp/sup").splitlines()
    assert subjects[:2] == [
        "run 2 of sup: nothing logged or saved",
        "run 1 of sup lost: nothing logged or saved",
    ]
    lost = trailers(workspace, "exp/sup~1")
    assert "Status: lost\n" in lost and "Exit-Code" not in lost
    log = workspace / ".expman" / "runs" / "sup" / "001" / "output.log"
    assert log.exists()  # its output is kept, and the record says where
    assert f"Output: {log}." in git(workspace, "log", "-1", "--format=%b", "exp/sup~1")


def test_command_killed_first_the_run_is_recorded_and_the_lock_freed(
    workspace: Path, flags: Path
) -> None:
    process, pid = start(workspace, flags, "stubborn")
    os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 137
    assert stderr.splitlines()[-1].startswith(
        "expman: run 1 of sup failed (exit 137): nothing logged or saved; recorded as "
    )
    assert lock_is_free(workspace / ".expman" / "locks" / "sup.lock")
    after = expman(workspace, "run", "sup", "--", "python", "-c", "print('after')")
    assert after.returncode == 0, after.stderr
    assert "lost" not in after.stderr


def git_children(pid: int) -> list[int]:
    """The git processes that process ``pid`` started and that still run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid and Path(command[0].decode()).name == "git" and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_ctrl_c_in_the_terminal_reaches_expman_and_the_command_and_the_run_is_recorded(
    workspace: Path, flags: Path
) -> None:
    process, _ = start(workspace, flags, "group")
    os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C: expman's whole group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert (flags / "got-SIGINT").exists()
    assert stderr.splitlines()[-1].startswith(
        "expman: run 1 of sup interrupted (SIGINT, exit 130): nothing logged or saved; recorded"
    )
    assert "Status: interrupted\nExit-Code: 130\nSignal: SIGINT\n" in trailers(workspace)


def test_a_git_reader_killed_while_the_command_runs_is_replaced_for_the_record(
    workspace: Path, flags: Path
) -> None:
    process, _ = start(workspace, flags, "stubborn")
    readers = git_children(process.pid)  # the one `git cat-file --batch` of the whole run
    assert readers
    for reader in readers:
        os.kill(reader, signal.SIGKILL)
    (flags / "release").write_text("")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stderr.splitlines()[-1].startswith(
        "expman: run 1 of sup: nothing logged or saved; recorded as "
    )
    assert "Status: succeeded\nExit-Code: 0\n" in trailers(workspace)


# -- live output ------------------------------------------------------------------------


def read_live(fd: int, acks: Path, process: subprocess.Popen[bytes]) -> bytes:
    """Everything expman prints; each ``line N`` acknowledged as soon as it is seen."""
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the pseudo-terminal closed
            chunk = b""
        if not chunk:
            break
        seen += chunk
        for i in range(5):
            if f"line {i}".encode() in seen:
                (acks / str(i)).touch()
    process.wait(timeout=60)
    return seen


@pytest.mark.parametrize("through", ["pipe", "pty"])
def test_output_is_seen_line_by_line(workspace: Path, tmp_path: Path, through: str) -> None:
    (workspace / "talker.py").write_text(TALKER)
    assert expman(workspace, "new", "talk").returncode == 0
    acks = tmp_path / "acks"
    acks.mkdir()
    command = [str(EXPMAN), "run", "talk", "--", "python", "talker.py"]
    env = environment(ACKS=str(acks))
    if through == "pipe":
        process = subprocess.Popen(
            command, cwd=workspace, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        with process.stdout:
            seen = read_live(process.stdout.fileno(), acks, process)
    else:
        master, slave = pty.openpty()
        process = subprocess.Popen(
            command, cwd=workspace, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
        )
        os.close(slave)
        seen = read_live(master, acks, process)
        os.close(master)
    assert process.returncode == 0, seen.decode()
    text = seen.decode().replace("\r\n", "\n")
    assert f"isatty={through == 'pty'}\n" in text
    assert "\x1b[32mgreen\x1b[0m\n" in text  # the terminal gets the bytes as printed
    log = (workspace / ".expman" / "runs" / "talk" / "001" / "output.log").read_text()
    assert log == (
        f"isatty={through == 'pty'}\ngreen\nprogress 100%\n"
        + "".join(f"line {i}\n" for i in range(5))
    )
