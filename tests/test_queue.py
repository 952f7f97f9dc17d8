"""The run queue on real Dask clusters: a LocalCluster, and scheduler + worker processes.

Every test starts its Dask processes in sessions of their own and kills them
at the end; waits are bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.cli import EXPMAN
from tests.conftest import git, run_expman

BIN = Path(sys.executable).parent
WAIT_S = 120


def entry(workspace: Path, name: str) -> dict[str, object]:
    path = workspace / ".expman" / "queue" / "entries" / f"{name}.json"
    data: dict[str, object] = json.loads(path.read_text())
    return data


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def runs_on_branch(workspace: Path, name: str) -> list[str]:
    """The Run trailers of the experiment's run commits: one per run it ever did."""
    log = git(workspace, "log", "--format=%(trailers:key=Run,valueonly)", f"exp/{name}")
    return [line for line in log.split() if line]


def states(workspace: Path) -> dict[str, str]:
    result = run_expman(workspace, "queue", "--json")
    assert result.returncode == 0, result.stderr
    return {e["name"]: e["state"] for e in json.loads(result.stdout)}


def kill_group(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@contextlib.contextmanager
def background(*command: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """A process in its own session (as from a terminal), killed with its group at the end."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EXPMAN_")}
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        kill_group(process)
        if process.stdout:
            process.stdout.close()


@contextlib.contextmanager
def dask_cluster(
    directory: Path, workers: int
) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    """A ``dask scheduler`` and ``workers`` ``dask worker`` processes on loopback."""
    scheduler_file = directory / "scheduler.json"
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            background(
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
                cwd=directory,
            )
        )
        wait_for(scheduler_file.exists, "the dask scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        processes = [
            stack.enter_context(
                background(
                    str(BIN / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--name",
                    f"machine-{number}",
                    cwd=directory,
                )
            )
            for number in range(workers)
        ]
        yield address, processes


def sweep(workspace: Path, name: str, *sets: str) -> None:
    assert run_expman(workspace, "new", "base").returncode == 0
    args = [a for s in sets for a in ("--set", s)]
    result = run_expman(workspace, "sweep", name, "--from", "base", *args)
    assert result.returncode == 0, result.stderr


def test_a_grid_sweep_runs_to_completion_on_a_local_cluster(workspace: Path) -> None:
    sweep(workspace, "grid", "steps=2,3,4", "model.hidden_units=[10,10],[20,20]")
    result = run_expman(workspace, "queue", "start", "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    names = [f"grid-{i}" for i in range(1, 7)]
    assert states(workspace) == dict.fromkeys(names, "done")
    assert result.stdout.splitlines()[-1].endswith("6 done")
    workers = set()
    for name in names:
        assert runs_on_branch(workspace, name) == ["1"], name  # run once, recorded on its branch
        workers.add(entry(workspace, name)["worker"])
        assert "already running" not in run_expman(workspace, "queue", "logs", name).stdout
    assert len(workers) == 2  # -j 2: two worker processes
    steps = git(workspace, "show", "exp/grid-6:expman-runs/grid-6/001/run.json")
    assert json.loads(steps)["last_step"] == 4
    assert json.loads(steps)["status"] == "succeeded"


def test_scheduler_and_worker_processes_run_the_sweep(workspace: Path, tmp_path: Path) -> None:
    sweep(workspace, "grid", "steps=2,3,4", "model.hidden_units=[10,10],[20,20]")
    with dask_cluster(tmp_path, workers=2) as (address, _):
        result = run_expman(workspace, "queue", "start", "--scheduler", address)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [f"grid-{i}" for i in range(1, 7)]
    assert states(workspace) == dict.fromkeys(names, "done")
    for name in names:
        assert runs_on_branch(workspace, name) == ["1"], name
    assert {str(entry(workspace, n)["worker"]).split(":")[0] for n in names} == {"tcp"}


def test_a_failing_member_is_recorded_with_its_log_and_the_others_go_on(workspace: Path) -> None:
    sweep(workspace, "f", "exit_code=0,3,0")
    result = run_expman(workspace, "queue", "start", "-j", "2")
    assert result.returncode == 1
    assert states(workspace) == {"f-1": "done", "f-2": "failed", "f-3": "done"}
    assert entry(workspace, "f-2")["exit_code"] == 3
    assert "f-2: failed" in result.stdout
    logs = run_expman(workspace, "queue", "logs", "f-2")
    assert "finished at step 20" in logs.stdout
    assert "run 1 of f-2 failed (exit 3)" in logs.stderr + logs.stdout
    retried = run_expman(workspace, "queue", "retry", "f-2")
    assert retried.stdout == "queued f-2 again (try 2)\n"
    assert states(workspace)["f-2"] == "queued"


def test_a_queued_experiment_already_running_by_hand_is_refused_by_its_lock(
    workspace: Path,
) -> None:
    assert run_expman(workspace, "new", "base").returncode == 0
    assert (
        run_expman(workspace, "new", "slow", "--from", "base", "--set", "sleep=30").returncode == 0
    )
    with background(str(EXPMAN), "run", "slow", cwd=workspace):
        wait_for(lambda: (workspace / ".expman" / "runs" / "slow" / "001").is_dir(), "the run")
        assert run_expman(workspace, "run", "slow", "--queue").returncode == 0
        result = run_expman(workspace, "queue", "start")
        assert result.returncode == 1
        assert states(workspace) == {"slow": "failed"}
        log = run_expman(workspace, "queue", "logs", "slow").stdout
        assert "expman: error: experiment slow is already running" in log


def process_group_of_parent(pid: int) -> int:
    """The process group of ``pid``'s parent: the Dask worker that started the run."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return os.getpgid(parent)


def test_a_killed_worker_is_recorded_as_lost_and_can_be_retried(
    workspace: Path, tmp_path: Path
) -> None:
    sweep(workspace, "k", "sleep=60")
    with dask_cluster(tmp_path, workers=2) as (address, _):
        with background(str(EXPMAN), "queue", "start", "--scheduler", address, cwd=workspace) as q:
            wait_for(lambda: entry(workspace, "k-1")["pid"] is not None, "the run to start")
            run = int(str(entry(workspace, "k-1")["pid"]))
            # The machine dies: its `dask worker` processes and the run it was executing.
            os.killpg(process_group_of_parent(run), signal.SIGKILL)
            os.killpg(run, signal.SIGKILL)
            assert q.wait(timeout=WAIT_S) == 1
        assert states(workspace) == {"k-1": "lost"}
        assert "worker lost" in str(entry(workspace, "k-1")["error"])
        assert run_expman(workspace, "queue", "retry", "k-1").returncode == 0
        assert run_expman(workspace, "run", "k-1", "--set", "sleep=0").returncode == 0
        result = run_expman(workspace, "queue", "start", "--scheduler", address)
        assert result.returncode == 0, result.stdout
    assert states(workspace) == {"k-1": "done"}
    # The killed run left no record; then one run by hand and the retried one.
    assert runs_on_branch(workspace, "k-1") == ["2", "1"]


def test_a_killed_queue_start_is_restarted_and_nothing_runs_twice(workspace: Path) -> None:
    sweep(workspace, "r", "sleep=0,0,6,6,0,0")
    with background(str(EXPMAN), "queue", "start", "-j", "2", cwd=workspace) as first:
        wait_for(
            lambda: (
                entry(workspace, "r-3")["pid"] is not None
                and entry(workspace, "r-4")["pid"] is not None
            ),
            "the slow runs",
        )
        os.kill(first.pid, signal.SIGKILL)  # the submitting process alone dies
        first.wait(timeout=30)
        assert states(workspace)["r-5"] == "queued"
        second = run_expman(workspace, "queue", "start", "-j", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    names = [f"r-{i}" for i in range(1, 7)]
    assert states(workspace) == dict.fromkeys(names, "done")
    for name in names:
        assert runs_on_branch(workspace, name) == ["1"], name


def test_ctrl_c_interrupts_the_runs_records_them_and_leaves_the_rest_queued(
    workspace: Path,
) -> None:
    sweep(workspace, "c", "sleep=60,0")
    with background(str(EXPMAN), "queue", "start", "-j", "1", cwd=workspace) as start:
        wait_for(lambda: entry(workspace, "c-1")["pid"] is not None, "the run to start")
        time.sleep(1)  # the training script is sleeping
        os.killpg(start.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        assert start.wait(timeout=WAIT_S) == 130
        assert start.stdout is not None
        output = start.stdout.read()
    assert "c-1: interrupted" in output
    assert states(workspace) == {"c-1": "interrupted", "c-2": "queued"}
    trailers = git(workspace, "log", "-1", "--format=%(trailers:key=Status)", "exp/c-1")
    assert trailers.strip() == "Status: interrupted"


def test_cancel_retry_and_their_errors(workspace: Path) -> None:
    assert run_expman(workspace, "new", "a").returncode == 0
    assert run_expman(workspace, "run", "a", "--queue").stderr == (
        "expman: queued a (try 1): expman queue start runs it\n"
    )
    again = run_expman(workspace, "run", "a", "--queue")
    assert (again.returncode, again.stderr) == (
        1,
        "expman: error: experiment a is already queued in the queue: see expman queue\n",
    )
    assert run_expman(workspace, "queue", "cancel", "a").stdout == (
        "cancelled a (expman queue retry a queues it again)\n"
    )
    assert states(workspace) == {"a": "cancelled"}
    twice = run_expman(workspace, "queue", "cancel", "a")
    assert twice.stderr == "expman: error: experiment a is cancelled, not queued or running\n"
    logs = run_expman(workspace, "queue", "logs", "a")
    assert logs.stderr == "expman: error: experiment a has no log yet: it is cancelled\n"
    assert run_expman(workspace, "queue", "retry", "a").stdout == "queued a again (try 2)\n"
    missing = run_expman(workspace, "queue", "retry", "b")
    assert missing.stderr == (
        "expman: error: experiment b is not in the queue: queue it with expman run b --queue\n"
    )
    assert run_expman(workspace, "run", "nope", "--queue").returncode == 5
    bad = run_expman(workspace, "queue", "start", "--resources", "GPU")
    assert (bad.returncode, bad.stderr) == (
        2,
        "expman: error: invalid --resources 'GPU': expected NAME=AMOUNT, e.g. GPU=1\n",
    )
