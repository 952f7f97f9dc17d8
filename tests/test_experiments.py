"""expman init / new / run / list / show / log / rm on real git repositories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from tests.cli import checkout_state, expman
from tests.conftest import git


def read_branch_file(repo: Path, branch: str, path: str) -> str:
    return git(repo, "show", f"{branch}:{path}")


# -- init -------------------------------------------------------------------------------


def test_init_creates_config_and_ignores_local_state_once(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text("*.pyc")  # no final newline
    first = expman(repo, "init")
    assert first.returncode == 0, first.stderr
    assert first.stdout == (
        f"created {repo / 'expman.toml'}\nadded /.expman/ to {repo / '.gitignore'}\n"
    )
    assert (repo / ".gitignore").read_text() == (
        "*.pyc\n# expman's local state: checkpoints, worktrees, run logs\n/.expman/\n"
    )
    assert 'command = "python train.py"' in (repo / "expman.toml").read_text()
    second = expman(repo, "init")
    assert second.returncode == 0
    assert second.stdout == f"{repo / 'expman.toml'} already exists; left as it is\n"
    assert (repo / ".gitignore").read_text().count("/.expman/") == 1


def test_init_outside_a_repository(tmp_path: Path) -> None:
    result = expman(tmp_path, "init")
    assert result.returncode == 4
    assert result.stderr == (
        f"expman: error: {tmp_path} is not inside a git repository: run `git init` there first\n"
    )


# -- new --------------------------------------------------------------------------------


def test_new_snapshots_the_working_tree_and_touches_nothing(workspace: Path) -> None:
    (workspace / "train.py").write_text((workspace / "train.py").read_text() + "# edited\n")
    (workspace / "notes.md").write_text("untracked but not ignored\n")
    (workspace / "debug.log").write_text("ignored\n")
    git(workspace, "add", "notes.md")  # staged, so the index differs from HEAD too
    before = checkout_state(workspace)
    result = expman(workspace, "new", "base")
    assert result.returncode == 0, result.stderr
    assert checkout_state(workspace) == before
    head = git(workspace, "rev-parse", "main").strip()
    assert result.stdout.startswith("created experiment base: branch exp/base at ")
    assert result.stdout.endswith(f", from main at {head[:12]} with uncommitted changes\n")
    assert read_branch_file(workspace, "exp/base", "train.py").endswith("# edited\n")
    assert read_branch_file(workspace, "exp/base", "notes.md") == "untracked but not ignored\n"
    files = git(workspace, "ls-tree", "-r", "--name-only", "exp/base").split()
    assert "debug.log" not in files
    assert git(workspace, "rev-parse", "exp/base^").strip() == head
    assert git(workspace, "log", "-1", "--format=%s", "exp/base").strip() == "new experiment base"


def test_new_with_set_is_a_one_line_diff_in_git(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    result = expman(
        workspace, "new", "wide", "--from", "base", "--set", "model.hidden_units=[20,20]"
    )
    assert result.returncode == 0, result.stderr
    assert "params.model.hidden_units: [10, 10] -> [20, 20]" in result.stdout
    diff = git(workspace, "diff", "exp/base", "exp/wide", "--", "expman.toml")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changed == ["-hidden_units = [10, 10]", "+hidden_units = [20, 20]"]
    assert git(workspace, "log", "-1", "--format=%s", "exp/wide").strip() == (
        "new experiment wide from base: model.hidden_units = [20, 20]"
    )
    assert "hidden_units = [10, 10]" in (workspace / "expman.toml").read_text()


def test_new_with_a_key_that_does_not_exist_says_so(workspace: Path) -> None:
    result = expman(workspace, "new", "drop", "--set", "model.dropout=0.5", "--set", "opt=adam")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "expman: params.model.dropout did not exist in expman.toml; it was added",
        "expman: params.opt did not exist in expman.toml; it was added",
    ]
    toml = read_branch_file(workspace, "exp/drop", "expman.toml")
    assert "dropout = 0.5" in toml
    assert 'opt = "adam"' in toml


def test_new_from_a_git_revision(workspace: Path) -> None:
    first = git(workspace, "rev-parse", "HEAD").strip()
    (workspace / "extra.py").write_text("x = 1\n")
    git(workspace, "add", "extra.py")
    git(workspace, "commit", "-q", "-m", "extra")
    assert expman(workspace, "new", "old", "--from", first).returncode == 0
    assert git(workspace, "rev-parse", "exp/old^").strip() == first
    missing = expman(workspace, "new", "other", "--from", "no-such-thing")
    assert missing.returncode == 5
    assert missing.stderr == (
        "expman: error: --from 'no-such-thing' is neither an experiment nor a git revision: "
        "check the name with expman list\n"
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x", "use letters, digits, '.', '_' and '-', starting with a letter or a digit"),
        ("a..b", "git refuses names containing '..' or ending in '.' or '.lock'"),
        ("-rf", "use letters, digits, '.', '_' and '-', starting with a letter or a digit"),
        ("x.lock", "git refuses names containing '..' or ending in '.' or '.lock'"),
        ("with space", "use letters, digits, '.', '_' and '-', starting with a letter or a digit"),
        ("a/b", "use letters, digits, '.', '_' and '-', starting with a letter or a digit"),
        ("", "it is empty"),
        ("x" * 101, "it is longer than 100 characters"),
    ],
)
def test_invalid_names_are_refused_and_leave_nothing(
    workspace: Path, name: str, reason: str
) -> None:
    result = (
        expman(workspace, "new", "--", name)
        if name.startswith("-")
        else expman(workspace, "new", name)
    )
    assert result.returncode == 9
    assert result.stderr == f"expman: error: invalid experiment name {name!r}: {reason}\n"
    assert git(workspace, "for-each-ref", "refs/heads/exp/") == ""


def test_existing_experiment(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    again = expman(workspace, "new", "base")
    assert again.returncode == 6
    assert again.stderr == (
        "expman: error: experiment base already exists (exp/base): choose another name, "
        "or remove it with expman rm base\n"
    )


def test_repository_problems(workspace: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    (empty / "expman.toml").write_text("")
    no_commits = expman(empty, "new", "base", env={"GIT_AUTHOR_NAME": "x"})
    assert no_commits.returncode == 4
    assert "has no commits yet: commit something first" in no_commits.stderr

    git(workspace, "checkout", "-q", "--detach")
    detached = expman(workspace, "new", "base")
    assert detached.returncode == 4
    assert detached.stderr == (
        "expman: error: HEAD is detached, so the experiment would have no branch to come "
        "from: check out a branch (git switch main), or give --from REF\n"
    )
    git(workspace, "checkout", "-q", "main")

    git(workspace, "config", "--unset", "user.name")
    git(workspace, "config", "--unset", "user.email")
    home = tmp_path / "home"
    home.mkdir()
    anonymous = expman(
        workspace,
        "new",
        "base",
        env={"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "EMAIL": "", "GIT_COMMITTER_EMAIL": ""},
    )
    assert anonymous.returncode == 4
    assert anonymous.stderr.startswith("expman: error: git does not know who you are")


def test_missing_or_broken_config(workspace: Path) -> None:
    (workspace / "expman.toml").unlink()
    missing = expman(workspace, "list")
    assert missing.returncode == 11
    assert missing.stderr == (
        f"expman: error: no expman.toml in {workspace}: run `expman init` there first\n"
    )
    (workspace / "expman.toml").write_text("[run\n")
    broken = expman(workspace, "list")
    assert broken.returncode == 11
    assert broken.stderr.startswith(f"expman: error: {workspace / 'expman.toml'} is not valid TOML")


def test_bad_set(workspace: Path) -> None:
    for bad, message in [
        ("noequals", "expected KEY=VALUE"),
        ("a b=1", "expected KEY=VALUE"),
        ("lr=[1,", "'[1,' is not a TOML value"),
    ]:
        result = expman(workspace, "new", "x", "--set", bad)
        assert result.returncode == 10, bad
        assert result.stderr.startswith(f"expman: error: invalid --set {bad!r}: ")
        assert message in result.stderr
        assert result.stderr.count("\n") == 1
    assert git(workspace, "for-each-ref", "refs/heads/exp/") == ""


# -- run --------------------------------------------------------------------------------


def test_run_resumes_and_records_each_run_in_git(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    before = checkout_state(workspace)
    first = expman(workspace, "run", "base")
    assert first.returncode == 0, first.stderr
    assert "starting at step 0" in first.stdout
    assert checkout_state(workspace) == before
    second = expman(workspace, "run", "base")
    assert second.returncode == 0, second.stderr
    assert "starting at step 20" in second.stdout
    assert "finished at step 40" in second.stdout
    assert checkout_state(workspace) == before

    ckpt_dir = workspace / ".expman" / "checkpoints" / "base"
    assert sorted(p.name for p in ckpt_dir.glob("ckpt-*")) == [
        "ckpt-000001.h5",
        "ckpt-000020.h5",
        "ckpt-000040.h5",
    ]
    oneline = git(workspace, "log", "--format=%s", "exp/base").splitlines()
    assert oneline[:3] == [
        "run 2 of base: step 40, loss 0.025, accuracy 0.975",
        "run 1 of base: step 20, loss 0.05, accuracy 0.95",
        "new experiment base",
    ]
    trailers = git(workspace, "log", "-1", "--format=%(trailers)", "exp/base")
    assert "Status: succeeded\n" in trailers
    assert "Run: 2\n" in trailers
    assert "Parent-Checkpoint: base@20\n" in trailers
    code_commit = git(workspace, "rev-parse", "exp/base~1").strip()
    assert f"Code-Commit: {code_commit}\n" in trailers

    run = json.loads(read_branch_file(workspace, "exp/base", "expman-runs/base/002/run.json"))
    assert run["status"] == "succeeded"
    assert run["exit_code"] == 0
    assert run["command"] == ["python", "train.py"]
    assert run["last_step"] == 40
    checkpoints = json.loads(
        read_branch_file(workspace, "exp/base", "expman-runs/base/002/checkpoints.json")
    )
    assert [c["step"] for c in checkpoints] == [1, 20, 40]
    newest = ckpt_dir / "ckpt-000040.h5"
    assert checkpoints[-1]["blake3"] == blake3.blake3(newest.read_bytes()).hexdigest()
    assert "sha256" not in checkpoints[-1]
    assert checkpoints[-1]["size"] == newest.stat().st_size
    metrics = json.loads(
        read_branch_file(workspace, "exp/base", "expman-runs/base/002/metrics.json")
    )
    assert metrics["final"] == {"loss": 0.025, "accuracy": 0.975}
    assert metrics["best"] == {"loss": 0.025, "accuracy": 0.975}
    architecture = json.loads(
        read_branch_file(workspace, "exp/base", "expman-runs/base/002/architecture.json")
    )
    assert {t["name"]: t["shape"] for t in architecture["tensors"]}["dnn/hiddenlayer_0/kernel"] == [
        4,
        10,
    ]
    log = workspace / ".expman" / "runs" / "base" / "002" / "output.log"
    assert "finished at step 40" in log.read_text()


# `pip install expman` without the remote extra: fsspec cannot be imported.
_WITHOUT_REMOTE = (
    "import sys; sys.modules['fsspec'] = None; sys.argv[0] = 'expman'; "
    "from expman.cli import main; main()"
)


def expman_without_remote(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EXPMAN_")}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_REMOTE, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_run_works_without_the_remote_extra(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    for number, start in ((1, 0), (2, 20)):
        run = expman_without_remote(workspace, "run", "base")
        assert run.returncode == 0, run.stderr
        assert f"starting at step {start}" in run.stdout
        assert run.stderr.startswith(f"expman: run {number} of base: step {start + 20}")


def test_run_without_the_remote_extra_says_the_latest_checkpoint_is_missing(
    workspace: Path,
) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    (workspace / ".expman" / "checkpoints" / "base" / "ckpt-000020.h5").unlink()
    store = workspace.parent / "store"
    assert expman(workspace, "remote", "add", "origin", str(store)).returncode == 0

    run = expman_without_remote(workspace, "run", "base")
    assert run.returncode == 5
    assert run.stderr == (
        "expman: error: the latest checkpoint of base (ckpt-000020.h5, step 20) is not on "
        "this machine, and fetching it needs the remote extra: pip install 'expman[remote]', "
        "or start over with expman run base --fresh\n"
    )
    assert git(workspace, "log", "-1", "--format=%s", "exp/base").startswith("run 1 of base")


def test_exit_code_is_the_commands_and_failures_are_recorded(workspace: Path) -> None:
    assert expman(workspace, "new", "broken", "--set", "exit_code=7").returncode == 0
    result = expman(workspace, "run", "broken")
    assert result.returncode == 7
    assert result.stderr.splitlines()[-1].startswith(
        "expman: run 1 of broken failed (exit 7): step 20, loss 0.05"
    )
    assert "Status: failed" in git(workspace, "log", "-1", "--format=%(trailers)", "exp/broken")


def test_refused_warm_start_exits_3_and_names_every_tensor(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    new = expman(workspace, "new", "wide", "--from", "base", "--set", "model.hidden_units=[20,20]")
    assert new.returncode == 0
    refused = expman(workspace, "run", "wide", "--from-checkpoint", "base")
    assert refused.returncode == 3
    assert "Traceback" not in refused.stderr
    lines = refused.stderr.splitlines()
    assert lines[0] == (
        f"expman: checkpoint {workspace}/.expman/checkpoints/base/ckpt-000020.h5 (written by "
        f"experiment base, commit {git(workspace, 'rev-parse', 'exp/base~1').strip()[:12]}) "
        "does not match the model: 3 tensor differences"
    )
    assert lines[1:4] == [
        "  dnn/hiddenlayer_0/bias: checkpoint [10] vs model [20]",
        "  dnn/hiddenlayer_0/kernel: checkpoint [4, 10] vs model [4, 20]",
        "  dnn/logits/kernel: checkpoint [10, 3] vs model [20, 3]",
    ]
    assert lines[-1].startswith(
        "expman: run 1 of wide refused (exit 3): architecture differs from base@20"
    )
    assert "starting at step" not in refused.stdout  # refused before any weight was touched
    assert not list((workspace / ".expman" / "checkpoints" / "wide").glob("ckpt-*"))
    trailers = git(workspace, "log", "-1", "--format=%(trailers)", "exp/wide")
    assert "Status: refused\n" in trailers
    assert "Exit-Code: 3\n" in trailers

    partial = expman(workspace, "run", "wide", "--from-checkpoint", "base@20", "--partial")
    assert partial.returncode == 0, partial.stderr
    assert "PartialRestoreWarning" in partial.stderr
    assert "starting at step 20" in partial.stdout


def test_warm_start_from_a_missing_step(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    assert expman(workspace, "new", "other").returncode == 0
    result = expman(workspace, "run", "other", "--from-checkpoint", "base@7")
    assert result.returncode == 5
    assert result.stderr == (
        "expman: error: experiment base has no checkpoint at step 7 (available: 1, 20)\n"
    )
    never = expman(workspace, "run", "base", "--from-checkpoint", "other")
    assert never.returncode == 5
    assert "experiment other has no checkpoint to start from" in never.stderr


def test_run_with_set_commits_the_change_first(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    result = expman(workspace, "run", "base", "--set", "steps=5")
    assert result.returncode == 0, result.stderr
    subjects = git(workspace, "log", "--format=%s", "exp/base").splitlines()
    assert subjects[:2] == [
        "run 1 of base: step 5, loss 0.2, accuracy 0.8",
        "set steps=5 for base",
    ]
    assert "steps = 5" in read_branch_file(workspace, "exp/base", "expman.toml")


def test_fresh_moves_old_checkpoints_aside(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    fresh = expman(workspace, "run", "base", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "starting at step 0" in fresh.stdout
    archives = list((workspace / ".expman" / "archive").iterdir())
    assert len(archives) == 1
    assert (archives[0] / "ckpt-000020.h5").exists()


def test_command_after_double_dash_and_missing_command(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    custom = expman(workspace, "run", "base", "--", "python", "-c", "print('custom command')")
    assert custom.returncode == 0
    assert custom.stdout == "custom command\n"
    missing = expman(workspace, "run", "base", "--", "no-such-program-xyz")
    assert missing.returncode == 127
    assert missing.stderr == (
        "expman: error: cannot start 'no-such-program-xyz': No such file or directory; check "
        "[run] command in expman.toml or the command after --\n"
    )


def test_unknown_experiment(workspace: Path) -> None:
    result = expman(workspace, "run", "nope")
    assert result.returncode == 5
    assert result.stderr == (
        "expman: error: no experiment named 'nope' (there are none yet): create it with "
        "expman new nope\n"
    )


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def start_sleeping_run(workspace: Path, name: str) -> subprocess.Popen[str]:
    from tests.cli import EXPMAN

    process = subprocess.Popen(
        [str(EXPMAN), "run", name],
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    log = workspace / ".expman" / "runs" / name / "001" / "output.log"
    wait_for(lambda: log.exists() and "sleeping" in log.read_text())
    return process


def test_one_run_per_experiment_and_a_crashed_run_does_not_lock_forever(
    workspace: Path,
) -> None:
    assert expman(workspace, "new", "slow", "--set", "sleep=30").returncode == 0
    assert expman(workspace, "new", "other").returncode == 0
    first = start_sleeping_run(workspace, "slow")
    second = expman(workspace, "run", "slow")
    assert second.returncode == 7
    assert second.stderr == (
        f"expman: error: experiment slow is already running (pid {first.pid}): wait for it "
        "to finish, or stop it first\n"
    )
    listing = expman(workspace, "list")
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows["slow"][4] == "running"
    concurrent = expman(workspace, "run", "other")  # another experiment may run meanwhile
    assert concurrent.returncode == 0, concurrent.stderr
    os.killpg(first.pid, signal.SIGKILL)  # expman and its command die at once
    first.communicate()
    after = expman(workspace, "run", "slow", "--set", "sleep=0")
    assert after.returncode == 0, after.stderr


def test_ctrl_c_records_an_interrupted_run(workspace: Path) -> None:
    assert expman(workspace, "new", "slow", "--set", "sleep=30").returncode == 0
    process = start_sleeping_run(workspace, "slow")
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback (most recent call last)" not in stderr.split("KeyboardInterrupt")[-1]
    assert stderr.splitlines()[-1].startswith("expman: run 1 of slow interrupted")
    trailers = git(workspace, "log", "-1", "--format=%(trailers)", "exp/slow")
    assert "Status: interrupted\n" in trailers


# -- list / show / log / rm -------------------------------------------------------------


def test_list_show_and_log(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    assert expman(workspace, "new", "wide", "--from", "base", "--set", "steps=3").returncode == 0
    listing = expman(workspace, "list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines() == [
        "NAME  BASE  RUNS  STEP  STATUS     loss",
        "base  -     1     20    succeeded  0.05",
        "wide  base  0     -     never run  -",
    ]
    as_json = json.loads(expman(workspace, "list", "--json").stdout)
    assert [(e["name"], e["runs"], e["status"]) for e in as_json] == [
        ("base", 1, "succeeded"),
        ("wide", 0, "never run"),
    ]
    assert as_json[0]["metrics"] == {"loss": 0.05, "accuracy": 0.95}

    shown = json.loads(expman(workspace, "show", "base", "--json").stdout)
    assert shown["params"]["model"] == {"hidden_units": [10, 10]}
    assert [c["step"] for c in shown["checkpoints"]] == [1, 20]
    assert [r["number"] for r in shown["run_history"]] == [1]
    text = expman(workspace, "show", "base").stdout
    assert "model.hidden_units = [10, 10]" in text
    assert "status:      succeeded, 1 run(s), latest step 20" in text

    runs = expman(workspace, "log", "base")
    assert runs.returncode == 0
    assert runs.stdout.splitlines()[0].split() == [
        "RUN",
        "COMMIT",
        "STATUS",
        "STEP",
        "TIME",
        "FROM",
        "CHECKPOINTS",
        "METRICS",
    ]
    assert runs.stdout.splitlines()[1].split()[2:4] == ["succeeded", "20"]
    assert runs.stdout.splitlines()[1].split()[6] == "1,20"
    assert json.loads(expman(workspace, "log", "base", "--json").stdout)[0]["checkpoints"] == [
        1,
        20,
    ]
    # wide was created from base: base's run is not wide's.
    assert expman(workspace, "log", "wide").stdout == (
        "experiment wide has no runs yet: expman run wide\n"
    )


def test_rm(workspace: Path) -> None:
    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base").returncode == 0
    unconfirmed = expman(workspace, "rm", "base")
    assert unconfirmed.returncode == 2
    assert unconfirmed.stderr == (
        "expman: error: expman rm base deletes the branch and its checkpoints: add --yes\n"
    )
    head = git(workspace, "rev-parse", "exp/base").strip()
    removed = expman(workspace, "rm", "base", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == (
        f"deleted experiment base (branch exp/base was {head[:12]}; git branch exp/base "
        f"{head[:12]} brings it back)\n"
    )
    assert git(workspace, "for-each-ref", "refs/heads/exp/") == ""
    assert not (workspace / ".expman" / "checkpoints" / "base").exists()
    assert not (workspace / ".expman" / "worktrees" / "base").exists()
    assert "worktrees/base" not in git(workspace, "worktree", "list")
    assert expman(workspace, "rm", "base", "--yes").returncode == 5


def test_help_has_examples() -> None:
    for command in ("init", "new", "run", "list", "show", "log", "rm"):
        result = expman(Path.cwd(), command, "--help")
        assert result.returncode == 0
        assert "Examples:" in result.stdout, command


def test_expman_debug_shows_the_traceback_and_keeps_the_exit_code(workspace: Path) -> None:
    plain = expman(workspace, "new", "a..b")
    assert "Traceback" not in plain.stderr
    debug = expman(workspace, "new", "a..b", env={"EXPMAN_DEBUG": "1"})
    assert debug.returncode == plain.returncode == 9
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()


def test_trailers_read_through_the_reader_are_the_ones_git_reads(workspace: Path) -> None:
    from expman.experiments._gitrepo import GitRepo

    assert expman(workspace, "new", "base").returncode == 0
    assert expman(workspace, "run", "base", "--set", "steps=2").returncode == 0
    git(workspace, "config", "user.name", "Ada")
    tree = git(workspace, "rev-parse", "exp/base^{tree}").strip()
    head = git(workspace, "rev-parse", "exp/base").strip()
    odd = [
        "subject\n\nRuns: 3\n--- a patch divider\nRuns: 4\n",
        "subject\n\nnot a trailer line\nRuns: 3\n",
        "only a subject, Runs: 3\n",
    ]
    commits = [git(workspace, "commit-tree", tree, "-p", head, "-m", m).strip() for m in odd]
    repo = GitRepo.discover(workspace)
    expected = {entry.commit: dict(entry.trailers) for entry in repo.log("exp/base")}
    with repo.reading():
        for commit, trailers in expected.items():
            assert repo.commit_trailers(commit) in (trailers, None)
            if "Runs" in trailers:  # expman's own commits are read without git log
                assert repo.commit_trailers(commit) == trailers
        assert [repo.commit_trailers(commit) for commit in commits] == [None, None, None]


HASHED_WHILE_RUNNING = """
import json, pathlib, sys, time
import blake3
import numpy as np
import expman

ckpts = expman.CheckpointManager()
for step in (1, 2):
    ckpts.save(step, {"w": np.full(1000, step, np.float32)}, force=True)
cache = pathlib.Path(sys.argv[1])
files = {
    p.name: "blake3:" + blake3.blake3(p.read_bytes()).hexdigest()
    for p in ckpts.directory.glob("ckpt-*")
}
deadline = time.monotonic() + 20
while time.monotonic() < deadline:  # expman hashes committed checkpoints while this runs
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if {name: entry[2] for name, entry in known.items()} == files:
        print("hashed while running:", sorted(files))
        break
    time.sleep(0.1)
else:
    sys.exit("expman did not hash the checkpoints while the command ran")
ckpts.save(3, {"w": np.full(1000, 3, np.float32)}, force=True)
"""


def test_checkpoints_are_hashed_for_the_record_while_the_command_runs(workspace: Path) -> None:
    """A run's record waits only for the files saved at its very end to be hashed."""
    assert expman(workspace, "new", "hashed").returncode == 0
    cache = workspace / ".expman" / "cache" / "digests-hashed.json"
    ran = expman(workspace, "run", "hashed", "--", "python", "-c", HASHED_WHILE_RUNNING, str(cache))
    assert ran.returncode == 0, ran.stderr
    assert "hashed while running: ['ckpt-000001.h5', 'ckpt-000002.h5']" in ran.stdout
    ckpt_dir = workspace / ".expman" / "checkpoints" / "hashed"
    checkpoints = json.loads(
        read_branch_file(workspace, "exp/hashed", "expman-runs/hashed/001/checkpoints.json")
    )
    assert {c["file"]: c["blake3"] for c in checkpoints} == {
        p.name: blake3.blake3(p.read_bytes()).hexdigest() for p in ckpt_dir.glob("ckpt-*")
    }
    assert len(checkpoints) == 3
