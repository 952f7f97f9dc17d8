"""Run records tell this run's truth, nothing fails after training, names cannot forge records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import expman
from expman._errors import UsageError
from expman.experiments._records import RunRecord, run_message
from tests.cli import EXPMAN
from tests.cli import expman as run_cli
from tests.conftest import git
from tests.test_supervisor import environment, wait_for


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def show(workspace: Path, revision: str, path: str) -> Any:
    return strict_json(git(workspace, "show", f"{revision}:{path}"))


# -- nothing that can fail after training is discovered after training --------------------


def test_a_missing_git_identity_stops_the_run_before_the_command(
    workspace: Path, tmp_path: Path
) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    git(workspace, "config", "--unset", "user.name")
    git(workspace, "config", "--unset", "user.email")
    home = tmp_path / "home"
    home.mkdir()
    anonymous = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "EMAIL": ""}
    result = run_cli(workspace, "run", "base", env=anonymous)
    assert result.returncode == 4
    assert result.stderr.startswith("expman: error: git does not know who you are")
    assert "starting at step" not in result.stdout  # the command never ran
    assert not list((workspace / ".expman").glob("checkpoints/base/ckpt-*.h5"))


def test_from_checkpoint_on_an_experiment_with_checkpoints_says_to_use_fresh(
    workspace: Path,
) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    assert run_cli(workspace, "run", "base").returncode == 0
    assert run_cli(workspace, "new", "more", "--from", "base").returncode == 0
    assert run_cli(workspace, "run", "more").returncode == 0
    refused = run_cli(workspace, "run", "more", "--from-checkpoint", "base")
    assert refused.returncode == 2
    assert refused.stderr == (
        "expman: error: experiment more already has checkpoints (latest step 20) and resumes "
        "from them, so --from-checkpoint base would be ignored: add --fresh to set them aside "
        "and start from base\n"
    )
    fresh = run_cli(workspace, "run", "more", "--from-checkpoint", "base", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "starting at step 20" in fresh.stdout


def test_a_branch_whose_expman_toml_is_broken_fails_before_the_command(
    workspace: Path,
) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    git(workspace, "checkout", "-q", "exp/base")
    (workspace / "expman.toml").write_text("[run\n")
    git(workspace, "commit", "-qam", "break it")
    git(workspace, "checkout", "-q", "main")
    result = run_cli(workspace, "run", "base")
    assert result.returncode == 11
    assert result.stderr.startswith("expman: error: expman.toml at ")
    assert not (workspace / ".expman" / "runs" / "base" / "001").exists()


# -- a record carries this run's own step and metrics --------------------------------------


def test_a_run_that_failed_before_saving_anything_says_so(workspace: Path) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    assert run_cli(workspace, "run", "base").returncode == 0
    failed = run_cli(workspace, "run", "base", "--set", "steps=0", "--set", "exit_code=1")
    assert failed.returncode == 1
    subject = git(workspace, "log", "-1", "--format=%s", "exp/base").strip()
    assert subject == "run 2 of base failed (exit 1): nothing logged or saved"
    assert failed.stderr.splitlines()[-1].startswith(f"expman: {subject}; recorded as ")
    metrics = show(workspace, "exp/base", "expman-runs/base/002/metrics.json")
    assert metrics == {"final": {}, "best": {}}
    run = show(workspace, "exp/base", "expman-runs/base/002/run.json")
    assert (run["last_step"], run["checkpoint_step"]) == (None, None)


STOPPABLE = """\
import os, pathlib, time
import numpy as np
import expman

flags = pathlib.Path(os.environ["FLAGS"])
ckpts = expman.CheckpointManager()
state = {"w": np.zeros(3, np.float32)}
for step in range(1, 6):
    expman.log_metrics(step, loss=1.0 / step)
    if step == 3:
        ckpts.save(step, state, metrics={"loss": 1.0 / step}, force=True)
(flags / "ready").write_text(str(os.getpid()))
time.sleep(120)
"""


def test_an_interrupted_run_records_its_last_step_and_its_last_checkpoint(
    workspace: Path, tmp_path: Path
) -> None:
    (workspace / "stoppable.py").write_text(STOPPABLE)
    assert run_cli(workspace, "new", "stop").returncode == 0
    flags = tmp_path / "flags"
    flags.mkdir()
    process = subprocess.Popen(
        [str(EXPMAN), "run", "stop", "--", "python", "stoppable.py"],
        cwd=workspace,
        env=environment(FLAGS=str(flags)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: (flags / "ready").exists())
    os.kill(process.pid, signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    message = git(workspace, "log", "-1", "--format=%s%n%(trailers)", "exp/stop")
    assert message.splitlines()[0] == (
        "run 1 of stop interrupted (SIGINT, exit 130): step 5, last checkpoint 3, loss 0.2"
    )
    assert "\nStep: 5\nCheckpoint-Step: 3\n" in message


# -- names cannot forge a record ------------------------------------------------------------

FORGED = "acc\nStatus: succeeded\nRuns: 41"


def test_log_metrics_refuses_names_with_control_characters(tmp_path: Path) -> None:
    expman.CheckpointManager(tmp_path / "ckpts")
    with pytest.raises(UsageError) as error:
        expman.log_metrics(1, **{FORGED: 1.0})
    assert str(error.value) == (
        "metric name 'acc\\nStatus: succeeded\\nRuns: 41' contains a control character "
        "(newline, tab, ...): use printable names such as 'val_loss'"
    )
    assert not (tmp_path / "ckpts" / "events.jsonl").exists()


def test_save_refuses_metric_names_with_control_characters(tmp_path: Path) -> None:
    manager = expman.CheckpointManager(tmp_path / "ckpts")
    with pytest.raises(UsageError):
        manager.save(1, {"w": np.zeros(2)}, metrics={FORGED: 1.0}, force=True)
    manager.close()
    assert not list((tmp_path / "ckpts").glob("ckpt-*.h5"))


def test_a_name_in_a_message_can_never_add_a_trailer(tmp_path: Path) -> None:
    record = RunRecord(
        experiment="base",
        number=2,
        run_id="base-2-abcdef",
        status="failed",
        exit_code=1,
        command=["python", "train.py"],
        host="h",
        started="2026-01-01T00:00:00+00:00",
        duration_s=1.0,
        code_commit="0" * 40,
        base=None,
        parent_checkpoint=None,
        fresh=False,
        params={},
        last_step=1,
        final_metrics={FORGED: 1.0},
        best_metrics={},
        architecture=None,
        checkpoints=[],
    )
    message = run_message(record)
    parsed = subprocess.run(
        ["git", "interpret-trailers", "--parse"],
        input=message,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert [line for line in parsed.splitlines() if line.startswith(("Status", "Runs"))] == [
        "Runs: 2",
        "Status: failed",
    ]
    assert "Metrics: acc\\x0aStatus: succeeded\\x0aRuns: 41=1.0\n" in parsed


def test_a_malformed_runs_trailer_does_not_break_later_runs(workspace: Path) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    git(workspace, "checkout", "-q", "exp/base")
    git(workspace, "commit", "-q", "--allow-empty", "-m", "forged\n\nRuns: 41x\nStatus: ok")
    git(workspace, "checkout", "-q", "main")
    result = run_cli(workspace, "run", "base")
    assert result.returncode == 0, result.stderr
    assert run_cli(workspace, "list").returncode == 0
    assert run_cli(workspace, "log", "base").returncode == 0


# -- JSON is JSON; TOML dates are strings ----------------------------------------------------

NOT_FINITE = """\
import expman
expman.CheckpointManager()
expman.log_metrics(1, loss=float("nan"), grad=float("inf"), acc=0.5)
"""


def test_nan_and_infinity_are_written_as_null(workspace: Path) -> None:
    (workspace / "nan.py").write_text(NOT_FINITE)
    assert run_cli(workspace, "new", "nan").returncode == 0
    assert run_cli(workspace, "run", "nan", "--", "python", "nan.py").returncode == 0
    metrics = show(workspace, "exp/nan", "expman-runs/nan/001/metrics.json")
    assert metrics["final"] == {"loss": None, "grad": None, "acc": 0.5}
    events = (workspace / ".expman" / "checkpoints" / "nan" / "events.jsonl").read_text()
    assert [strict_json(line)["metrics"] for line in events.splitlines()] == [
        {"loss": None, "grad": None, "acc": 0.5}
    ]
    for command in (["list", "--json"], ["show", "nan", "--json"], ["log", "nan", "--json"]):
        result = run_cli(workspace, *command)
        assert result.returncode == 0, result.stderr
        strict_json(result.stdout)


def test_toml_dates_are_iso_strings(workspace: Path) -> None:
    config = (workspace / "expman.toml").read_text()
    config = config.replace("[params]\n", "[params]\nwhen = 1979-05-27T07:32:00Z\n")
    (workspace / "expman.toml").write_text(config)
    created = run_cli(workspace, "new", "dated", "--set", "start=2024-01-01")
    assert created.returncode == 0, created.stderr
    printed = "import expman; print(sorted(expman.params().items())[-2:])"
    ran = run_cli(workspace, "run", "dated", "--set", "at=07:32:00", "--", "python", "-c", printed)
    assert ran.returncode == 0, ran.stderr
    params = show(workspace, "exp/dated", "expman-runs/dated/001/params.json")
    assert (params["when"], params["start"], params["at"]) == (
        "1979-05-27T07:32:00+00:00",
        "2024-01-01",
        "07:32:00",
    )
    shown = strict_json(run_cli(workspace, "show", "dated", "--json").stdout)
    assert shown["params"]["when"] == "1979-05-27T07:32:00+00:00"


# -- checkpoints that went missing, and ones that are not this experiment's ------------------


def test_missing_checkpoints_listed_by_the_last_record_are_named(workspace: Path) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    assert run_cli(workspace, "run", "base").returncode == 0
    directory = workspace / ".expman" / "checkpoints" / "base"
    for path in directory.iterdir():
        path.unlink()
    refused = run_cli(workspace, "run", "base")
    assert (refused.returncode, refused.stderr) == (
        5,
        "expman: error: the latest checkpoint of base (ckpt-000020.h5, step 20, from run 1) "
        "is not on this machine: fetch it with expman pull base --checkpoints latest, or "
        "start over with expman run base --fresh\n",
    )
    assert "starting at step" not in refused.stdout
    fresh = run_cli(workspace, "run", "base", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "starting at step 0" in fresh.stdout


def test_a_new_experiment_does_not_adopt_a_removed_ones_checkpoints(workspace: Path) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    assert run_cli(workspace, "run", "base").returncode == 0
    assert run_cli(workspace, "rm", "base", "--keep-checkpoints", "--yes").returncode == 0
    created = run_cli(workspace, "new", "base")
    assert created.returncode == 0
    archived = sorted((workspace / ".expman" / "archive").iterdir())
    assert len(archived) == 1
    assert created.stderr == (
        "expman: checkpoints left in .expman/checkpoints/base by a removed experiment of that "
        f"name moved to {archived[0]}: the new one starts from scratch\n"
    )
    assert (archived[0] / "ckpt-000020.h5").exists()
    ran = run_cli(workspace, "run", "base")
    assert "starting at step 0" in ran.stdout


def test_new_warns_about_large_untracked_files(workspace: Path) -> None:
    with open(workspace / "data.bin", "wb") as data:
        data.truncate(30_000_000)
    created = run_cli(workspace, "new", "big")
    assert created.returncode == 0
    assert created.stderr == (
        "expman: warning: data.bin (30.0 MB, untracked) was stored in exp/big: if it is "
        "data, not code, add it to .gitignore, then expman rm big --yes && expman new big\n"
    )
    (workspace / ".gitignore").write_text("/.expman/\n*.log\ndata.bin\n")
    assert run_cli(workspace, "new", "small").stderr == ""


# -- git lock files ---------------------------------------------------------------------------


def test_a_stale_lock_in_expmans_worktree_is_removed(workspace: Path) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    assert run_cli(workspace, "run", "base").returncode == 0
    stale = workspace / ".git" / "worktrees" / "base" / "index.lock"
    stale.write_text("")  # what a git killed during checkout leaves
    again = run_cli(workspace, "run", "base")
    assert again.returncode == 0, again.stderr
    assert not stale.exists()


def test_a_git_lock_expman_cannot_remove_is_named_before_the_run(workspace: Path) -> None:
    assert run_cli(workspace, "new", "base").returncode == 0
    lock = workspace / ".git" / "refs" / "heads" / "exp" / "base.lock"
    lock.write_text("")
    refused = run_cli(workspace, "run", "base")
    assert refused.returncode == 4
    assert refused.stderr == (
        f"expman: error: cannot record runs on refs/heads/exp/base: {lock} exists: another "
        "git process is running here, or one was killed; if none is running, remove that "
        "file and retry\n"
    )
    assert "starting at step" not in refused.stdout
