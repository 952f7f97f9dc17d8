"""A corpus of bad inputs, kept as data: each is one line, a documented exit code, and harmless.

Names, ``--set`` values, ``expman.toml`` variants and command lines (damaged
and hostile checkpoint files have their own tests). For every input: the exit
code, exactly one ``expman: error:`` line on stderr, nothing on stdout, no
traceback, and the user's checkout (HEAD, index, working tree, refs) and
earlier checkpoints byte for byte as they were. Most cases call ``main()``
in-process; a representative subset runs the real console script.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.cli import Outcome, expman, expman_in_process
from tests.conftest import make_repository, run_expman

# -- the corpus -------------------------------------------------------------------------

BAD_NAMES = [
    " ", "a b", "a/b", "../x", "..", ".", ".hidden", "a..b", "a.", "a.lock", "a@b", "a~1",
    "a^", "a:b", "a?", "a*", "a[", "a\\b", "x" * 101, "é", "a\tb", "a\nb", "/abs", "~", "@",
    "a@{1}", "HEAD^", "a//b", "a/", "a\x7f", "日本", "a\x01b", "'a'", '"a"', "a;rm -rf ~",
    "$(id)", "`id`", "-x", "--", "_a", "a\u200bb", "a\x00b",
]  # fmt: skip
NAME_COMMANDS = [["new"], ["show"], ["log"], ["rm", "--yes"], ["run"]]

BAD_SETS = [
    "noequals", "=1", "a b=1", ".a=1", "a.=1", "a..b=1", "é=1", "a/b=1", "a\nb=1", "a=[1,",
    "a={", 'a="unterminated', "a=1 2", "a=@", "a=--", "a=[1,2", "a=}", "a=1,,2", "a=",
    "a=hello world", "a=\x00", "a=" + "1" * 5000, "a=" + "[" * 3000 + "]" * 3000,
    "a=" + "[" * 101 + "]" * 101, "a=" + "{b=" * 200 + "1" + "}" * 200, "a=2024-13-45",
    "a='''x", "a=\"\\q\"", "model.hidden_units.x=1", "steps.deeper=2",
]  # fmt: skip

DEEP = "[" * 3000 + "]" * 3000
BAD_CONFIGS: dict[str, bytes | str] = {
    "invalid-utf8": b"\xff\xfe = 1\n",
    "invalid-utf8-in-string": b'[params]\nx = "\xc3\x28"\n',
    "latin1": "[params]\nname = 'café'\n".encode("latin-1"),
    "utf16": "[params]\nx = 1\n".encode("utf-16"),
    "nul-bytes": b"\x00\x01\x02",
    "bom": "\ufeff[run]\ncommand = 'x'\n".encode(),
    "5000-digit-integer": "[params]\nx = " + "1" * 5000 + "\n",
    "3000-deep-arrays": f"[params]\nx = {DEEP}\n",
    "3000-deep-tables": "[params]\nx = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n",
    "101-deep-arrays": "[params]\nx = " + "[" * 101 + "]" * 101 + "\n",
    "deep-dotted-keys": "[params]\n" + ".".join(["k"] * 120) + " = 1\n",
    "syntax": "[run\n",
    "duplicate-key": "[params]\na = 1\na = 2\n",
    "run-not-a-table": "run = 1\n",
    "params-not-a-table": "params = 5\n",
    "command-a-number": "[run]\ncommand = 5\n",
    "command-list-of-numbers": "[run]\ncommand = [1, 2]\n",
    "command-unbalanced-quote": '[run]\ncommand = "python \'train.py"\n',
    "command-nul": '[run]\ncommand = "python\\u0000 train.py"\n',
    "command-list-nul": '[run]\ncommand = ["python", "a\\u0000"]\n',
    "save-every-secs-text": '[checkpoints]\nsave_every_secs = "abc"\n',
    "save-every-secs-array": "[checkpoints]\nsave_every_secs = [1]\n",
    "save-every-secs-negative": "[checkpoints]\nsave_every_secs = -5\n",
    "keep-max-float": "[checkpoints]\nkeep_max = 1.5\n",
    "keep-max-bool": "[checkpoints]\nkeep_max = true\n",
    "save-first-step-text": '[checkpoints]\nsave_first_step = "yes"\n',
    "unknown-policy-key": "[checkpoints]\nkeep_maximum = 3\n",
    "keep-best-without-metric": "[checkpoints]\nkeep_best = 2\n",
    "best-metric-number": "[checkpoints]\nkeep_best = 1\nbest_metric = 5\n",
    "checkpoints-not-a-table": "checkpoints = [1]\n",
    "branch-prefix-traversal": '[experiments]\nbranch_prefix = "../"\n',
    "branch-prefix-number": "[experiments]\nbranch_prefix = 5\n",
    "key-metric-mode": '[experiments]\nkey_metric_mode = "up"\n',
}
SPECIAL_CONFIGS = ["directory", "fifo", "symlink-to-fifo", "device", "dangling-symlink", "17-MiB"]
CONFIG_COMMANDS = [["list"], ["new", "x"], ["show", "base"], ["run", "base"]]

COMMAND_LINES: list[tuple[list[str], int]] = [
    (["--bogus"], 2), (["nosuch"], 2), (["NEW", "x"], 2), (["lis"], 2), ([""], 2),
    (["-x"], 2), (["--version", "x"], 0), (["new"], 2), (["new", "a", "b"], 2),
    (["new", "a", "--set"], 2), (["new", "a", "--from"], 2), (["new", "a", "-m"], 2),
    (["new", "a", "--bogus"], 2), (["run"], 2), (["run", "base", "--from-checkpoint"], 2),
    (["run", "base", "--partial=yes"], 2), (["run", "base", "--bogus"], 2), (["show"], 2),
    (["show", "a", "b"], 2), (["show", "base", "--json=1"], 2), (["log"], 2),
    (["log", "base", "extra"], 2), (["list", "x"], 2), (["list", "--sort"], 2),
    (["rm"], 2), (["rm", "base"], 2), (["rm", "base", "--yes=no"], 2), (["compare"], 2),
    (["compare", "--html"], 2), (["compare", "base", "--bogus"], 2), (["init", "a", "b"], 2),
    (["init", "--template"], 2), (["init", "--command"], 2), (["-h", "--bogus"], 2),
    (["new", "base"], 6), (["show", "nosuch"], 5), (["log", "nosuch"], 5),
    (["rm", "nosuch", "--yes"], 5), (["run", "nosuch"], 5), (["new", "x", "--from", "nosuch"], 5),
    (["new", "x", "--from", "a\x00b"], 5), (["new", "x", "--from", "-rf"], 5),
    (["run", "wide", "--from-checkpoint", "nosuch"], 5),
    (["run", "wide", "--from-checkpoint", "base@abc"], 5),
    (["run", "wide", "--from-checkpoint", "base@999"], 5),
    (["run", "wide", "--from-checkpoint", "bad..name"], 9),
    (["compare", "base", "nosuch"], 5), (["compare", "base", "base@99"], 5),
    (["compare", "base", "wide", "--html", "missing/r.html"], 13),
    (["compare", "base", "wide", "--html", "."], 13),
    (["compare", "base", "wide", "--html", "train.py/r.html"], 13),
    (["init", "--template", "nosuch"], 11), (["init", "--template", "iris", "train.py"], 2),
    (["init", "train.py"], 2), (["init", "--template", "iris", "."], 2),
]  # fmt: skip

# A representative subset through the real console script (a FIFO included:
# reading it used to hang, which only a separate process can show safely).
SUBPROCESS_CASES: list[tuple[list[str], int, str | None]] = [
    (["--bogus"], 2, None),
    (["new", "a..b"], 9, None),
    (["new", "x", "--set", "a=" + DEEP], 10, None),
    (["list"], 11, "fifo"),
    (["list"], 11, "3000-deep-arrays"),
    (["new", "x"], 11, "invalid-utf8"),
    (["run", "base"], 11, "command-nul"),
    (["compare", "base", "wide", "--html", "missing/r.html"], 13, None),
    (["run", "wide", "--from-checkpoint", "base@999"], 5, None),
    (["init", "--template", "iris", "train.py"], 2, None),
]

# -- one shared check ---------------------------------------------------------------------


def user_state(repo: Path) -> dict[str, str]:
    """Digest of every file the user owns: HEAD, index, refs, working tree, checkpoints."""
    state = {}
    for path in sorted(repo.rglob("*")):
        relative = path.relative_to(repo).as_posix()
        kept = relative in ("HEAD", ".git/HEAD", ".git/index", ".git/packed-refs") or (
            relative.startswith((".git/refs/", ".expman/checkpoints/"))
            or not relative.startswith((".git/", ".git", ".expman"))
        )
        if kept and path.is_file() and not path.is_symlink():
            state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif kept and path.is_symlink():
            state[relative] = f"-> {os.readlink(path)}"
    return state


def assert_refused(outcome: Outcome, code: int, repo: Path, before: dict[str, str]) -> None:
    """The contract: the exit code, one error line, no traceback, nothing of the user's changed."""
    assert outcome.returncode == code, outcome
    assert "Traceback" not in outcome.stdout + outcome.stderr
    if code:
        assert outcome.stdout == "", outcome
        assert outcome.stderr.startswith("expman: error: "), outcome
        assert outcome.stderr.endswith("\n") and outcome.stderr.count("\n") == 1, outcome
    assert user_state(repo) == before


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base (run once, so it has checkpoints) and wide (from base, bigger model)."""
    repo = make_repository(tmp_path_factory.mktemp("seeded") / "repo")
    assert run_expman(repo, "new", "base").returncode == 0
    assert run_expman(repo, "run", "base").returncode == 0
    new = run_expman(repo, "new", "wide", "--from", "base", "--set", "model.hidden_units=[20]")
    assert new.returncode == 0
    assert any((repo / ".expman" / "checkpoints" / "base").glob("*.h5"))
    return repo


@pytest.fixture(scope="module")
def shared(seeded: Path) -> tuple[Path, dict[str, str]]:
    """The seeded workspace, shared by the cases that must not change it, and its state."""
    return seeded, user_state(seeded)


def break_config(repo: Path, variant: str) -> None:
    config = repo / "expman.toml"
    config.unlink()
    if variant in BAD_CONFIGS:
        content = BAD_CONFIGS[variant]
        config.write_bytes(content.encode() if isinstance(content, str) else content)
    elif variant == "directory":
        config.mkdir()
    elif variant in ("fifo", "symlink-to-fifo"):
        fifo = repo / "pipe" if variant == "symlink-to-fifo" else config
        os.mkfifo(fifo)
        if fifo != config:
            config.symlink_to(fifo)
    elif variant == "device":
        config.symlink_to("/dev/zero")
    elif variant == "dangling-symlink":
        config.symlink_to(repo / "nowhere.toml")
    elif variant == "17-MiB":
        with open(config, "wb") as file:
            file.truncate(17 * 2**20)
    else:
        raise AssertionError(variant)


@pytest.fixture
def copy_of_seeded(seeded: Path, tmp_path: Path) -> Path:
    target = tmp_path / "repo"
    shutil.copytree(seeded, target, symlinks=True)
    return target


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", NAME_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("name", BAD_NAMES, ids=ascii)
def test_bad_name(shared: tuple[Path, dict[str, str]], command: list[str], name: str) -> None:
    repo, before = shared
    outcome = expman_in_process(repo, *command, "--", name)
    assert_refused(outcome, 9, repo, before)


@pytest.mark.parametrize("command", [["new", "x"], ["run", "base"]], ids=" ".join)
@pytest.mark.parametrize("value", BAD_SETS, ids=lambda v: ascii(v[:30]))
def test_bad_set(shared: tuple[Path, dict[str, str]], command: list[str], value: str) -> None:
    repo, before = shared
    outcome = expman_in_process(repo, *command, "--set", value)
    assert_refused(outcome, 10, repo, before)
    assert len(outcome.stderr) < 300


@pytest.mark.parametrize("variant", [*BAD_CONFIGS, *SPECIAL_CONFIGS])
def test_bad_config(copy_of_seeded: Path, variant: str) -> None:
    break_config(copy_of_seeded, variant)
    before = user_state(copy_of_seeded)
    for command in CONFIG_COMMANDS:
        outcome = expman_in_process(copy_of_seeded, *command)
        assert_refused(outcome, 11, copy_of_seeded, before)
        assert len(outcome.stderr) < 400


@pytest.mark.parametrize(("args", "code"), COMMAND_LINES, ids=lambda v: ascii(v))
def test_bad_command_line(shared: tuple[Path, dict[str, str]], args: list[str], code: int) -> None:
    repo, before = shared
    outcome = expman_in_process(repo, *args)
    assert_refused(outcome, code, repo, before)


@pytest.mark.parametrize(("args", "code", "variant"), SUBPROCESS_CASES, ids=lambda v: ascii(v))
def test_real_console_script(
    copy_of_seeded: Path, args: list[str], code: int, variant: str | None
) -> None:
    if variant:
        break_config(copy_of_seeded, variant)
    before = user_state(copy_of_seeded)
    result = expman(copy_of_seeded, *args)
    outcome = Outcome(result.returncode, result.stdout, result.stderr)
    assert_refused(outcome, code, copy_of_seeded, before)


def test_the_corpus_is_large_enough() -> None:
    cases = (
        len(BAD_NAMES) * len(NAME_COMMANDS)
        + len(BAD_SETS) * 2
        + (len(BAD_CONFIGS) + len(SPECIAL_CONFIGS)) * len(CONFIG_COMMANDS)
        + len(COMMAND_LINES)
        + len(SUBPROCESS_CASES)
    )
    assert cases >= 300, cases
