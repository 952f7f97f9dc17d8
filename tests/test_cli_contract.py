"""The command line's contract: one-line errors, documented exit codes, literal help."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import checkout_state, expman
from tests.conftest import git


def test_usage_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    for args, message in [
        (["--bogus"], "no such option: --bogus: see expman --help"),
        (["nosuch"], "no such command 'nosuch': see expman --help"),
        (["new"], "missing argument 'NAME': see expman new --help"),
        (["new", "a", "b"], "got unexpected extra argument(s) (b): see expman new --help"),
        (["list", "--json", "x"], "got unexpected extra argument(s) (x): see expman list --help"),
        (["new", "a", "--set"], "option '--set' requires an argument: see expman --help"),
    ]:
        result = expman(tmp_path, *args, env={"NO_COLOR": "1"})
        assert (result.returncode, result.stderr) == (2, f"expman: error: {message}\n"), args
        assert result.stdout == ""


def test_version_short_help_and_python_m(tmp_path: Path) -> None:
    from expman import __version__

    version = expman(tmp_path, "--version")
    assert (version.returncode, version.stdout) == (0, f"expman {__version__}\n")
    assert expman(tmp_path, "-h").stdout == expman(tmp_path, "--help").stdout != ""
    assert expman(tmp_path, "new", "-h").stdout == expman(tmp_path, "new", "--help").stdout
    module = subprocess.run(
        [sys.executable, "-m", "expman", "nosuch"], capture_output=True, text=True, cwd=tmp_path
    )
    assert module.returncode == 2
    assert module.stderr == "expman: error: no such command 'nosuch': see expman --help\n"


def test_no_arguments_shows_the_help(tmp_path: Path) -> None:
    result = expman(tmp_path)
    assert result.returncode == 0
    assert result.stdout == expman(tmp_path, "--help").stdout


def test_help_renders_brackets_literally_and_lists_every_template(tmp_path: Path) -> None:
    run = expman(tmp_path, "run", "--help", env={"NO_COLOR": "1"}).stdout
    assert "instead of [run] command" in " ".join(run.split())
    assert "dotted path under [params]" in " ".join(run.split())
    assert "\x1b" not in run
    init = " ".join(expman(tmp_path, "init", "--help").stdout.split())
    templates = Path(__file__).parents[1] / "templates"
    names = sorted(p.name for p in templates.iterdir() if p.is_dir() and p.name[0] not in "_.")
    assert len(names) >= 2
    assert f"Also copy a runnable example project: {', '.join(names)}." in init


def test_shell_completion(tmp_path: Path) -> None:
    script = expman(tmp_path, "--show-completion", "bash")
    assert script.returncode == 0
    assert "_EXPMAN_COMPLETE=complete_bash" in script.stdout
    completed = expman(
        tmp_path,
        env={"_EXPMAN_COMPLETE": "complete_bash", "COMP_WORDS": "expman ru", "COMP_CWORD": "1"},
    )
    assert completed.stdout.split() == ["run"]


# -- bad inputs with an exact message --------------------------------------------------


def test_compare_html_into_a_missing_directory_or_onto_a_directory(workspace: Path) -> None:
    assert expman(workspace, "new", "a").returncode == 0
    assert expman(workspace, "new", "b").returncode == 0
    missing = workspace / "nowhere" / "r.html"
    result = expman(workspace, "compare", "a", "b", "--html", str(missing))
    assert (result.returncode, result.stderr) == (
        13,
        f"expman: error: cannot write {missing}: directory {missing.parent} does not exist: "
        "create it or choose another path\n",
    )
    result = expman(workspace, "compare", "a", "b", "--html", str(workspace))
    assert (result.returncode, result.stderr) == (
        13,
        f"expman: error: cannot write {workspace}: it is a directory: give a file name, "
        f"e.g. {workspace / 'report.html'}\n",
    )


def test_init_onto_a_file(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("mine")
    for args in (["--template", "iris"], []):
        result = expman(tmp_path, "init", *args, str(target))
        assert (result.returncode, result.stderr) == (
            2,
            f"expman: error: {target} is a file, not a directory: give a directory\n",
        )
    assert target.read_text() == "mine"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe = 1\n", "is not UTF-8 text (byte 0xff at offset 0): save it as UTF-8"),
        (
            b"[params]\nx = " + b"1" * 5000 + b"\n",
            "is not valid TOML (an integer has more than 4300 digits): quote it to keep it as text",
        ),
        (
            b"[params]\nx = " + b"[" * 3000 + b"]" * 3000 + b"\n",
            "nests values more than 100 levels deep: flatten it",
        ),
        (
            b"[params]\nx = " + b"[" * 101 + b"]" * 101 + b"\n",
            "nests values more than 100 levels deep: flatten it",
        ),
        (
            b'[checkpoints]\nsave_every_secs = "abc"\n',
            ": [checkpoints] save_every_secs must be a number, got 'abc' (a string)",
        ),
        (
            b'[run]\ncommand = "python\\u0000 train.py"\n',
            ": [run] command contains a NUL character: remove it",
        ),
    ],
)
def test_broken_config_is_one_line(workspace: Path, content: bytes, message: str) -> None:
    config = workspace / "expman.toml"
    config.write_bytes(content)
    for command in (["list"], ["new", "x"]):
        result = expman(workspace, *command)
        assert (result.returncode, result.stderr) == (
            11,
            f"expman: error: {config} {message}\n".replace(" :", ":"),
        )
    assert git(workspace, "for-each-ref", "refs/heads/exp/") == ""


def test_config_that_is_a_directory_or_a_fifo(workspace: Path) -> None:
    config = workspace / "expman.toml"
    config.unlink()
    config.mkdir()
    result = expman(workspace, "list")
    assert (result.returncode, result.stderr) == (
        11,
        f"expman: error: {config} is a directory, not a file: make it a TOML file "
        "(expman init writes one)\n",
    )
    config.rmdir()
    os.mkfifo(config)
    result = expman(workspace, "list")  # used to wait forever for a writer
    assert (result.returncode, result.stderr) == (
        11,
        f"expman: error: {config} is a FIFO, not a file: make it a TOML file "
        "(expman init writes one)\n",
    )


def test_set_values_too_long_or_too_deep(workspace: Path) -> None:
    digits = "1" * 5000
    result = expman(workspace, "new", "x", "--set", f"x={digits}")
    assert (result.returncode, result.stderr) == (
        10,
        f"expman: error: invalid --set '{('x=' + digits)[:40]}...': an integer has more than 4300 "
        "digits: quote it to keep it as text\n",
    )
    deep = "[" * 3000 + "]" * 3000
    result = expman(workspace, "new", "x", "--set", f"x={deep}")
    assert (result.returncode, result.stderr) == (
        10,
        f"expman: error: invalid --set '{('x=' + deep)[:40]}...': the value nests more than 100 "
        "levels deep\n",
    )


def test_command_without_shebang(workspace: Path) -> None:
    tool = workspace / "tool"
    tool.write_text("echo hi\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    assert expman(workspace, "new", "a").returncode == 0
    result = expman(workspace, "run", "a", "--", "./tool")
    assert (result.returncode, result.stderr) == (
        127,
        "expman: error: cannot start './tool': it is not a program (a script needs a first "
        "line such as #!/bin/sh); check [run] command in expman.toml or the command after --\n",
    )


def test_stale_git_lock_is_named(workspace: Path) -> None:
    lock = workspace / ".git" / "refs" / "heads" / "exp" / "a.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    before = checkout_state(workspace)
    result = expman(workspace, "new", "a")
    assert (result.returncode, result.stderr) == (
        4,
        f"expman: error: git update-ref failed: {lock} exists: another git process is "
        "running here, or one was killed; if none is running, remove that file and retry\n",
    )
    assert checkout_state(workspace) == before
    lock.unlink()
    assert expman(workspace, "new", "a").returncode == 0


def test_full_disk_during_new_says_so(small_filesystem: Path) -> None:
    from tests.conftest import make_repository

    repo = make_repository(small_filesystem / "repo")
    before = checkout_state(repo)
    filler = small_filesystem / "filler"
    with open(filler, "wb") as out, pytest.raises(OSError, match="No space left"):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    result = expman(repo, "new", "a")
    assert (result.returncode, result.stderr) == (
        13,
        f"expman: error: git cannot write to the repository at {repo}: no space left on the "
        "device: "
        "free some space and retry (nothing was changed)\n",
    )
    assert checkout_state(repo) == before
    assert git(repo, "for-each-ref", "refs/heads/exp/") == ""
    filler.unlink()
    assert expman(repo, "new", "a").returncode == 0
