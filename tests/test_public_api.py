"""The public surface is explicit and pinned: changing it is a decision."""

from __future__ import annotations

import ast
from pathlib import Path

import expman

PACKAGE = Path(expman.__file__).parent


def test_all_is_sorted_and_pinned() -> None:
    assert expman.__all__ == sorted(expman.__all__)
    assert expman.__all__ == [
        "Architecture",
        "ArchitectureDiff",
        "ArchitectureMismatchError",
        "Bits",
        "CheckpointCorruptError",
        "CheckpointError",
        "CheckpointExistsError",
        "CheckpointFormatError",
        "CheckpointIndexWarning",
        "CheckpointInfo",
        "CheckpointManager",
        "CheckpointMetadata",
        "CheckpointNotFoundError",
        "CheckpointPolicy",
        "CheckpointReadError",
        "CheckpointSaveFailedError",
        "CheckpointSkippedWarning",
        "CheckpointWriteError",
        "CommandNotFoundError",
        "ConfigError",
        "DtypeChange",
        "ExperimentExistsError",
        "ExperimentLockedError",
        "ExperimentNotFoundError",
        "ExpmanError",
        "ExpmanWarning",
        "FreshStateWarning",
        "InvalidAssignmentError",
        "InvalidNameError",
        "LastStepNotSavedWarning",
        "ModelConfigChangedWarning",
        "PartialRestoreWarning",
        "QueueError",
        "RemoteError",
        "RemoteIntegrityError",
        "RepositoryError",
        "RestoreReport",
        "RunOptions",
        "RunResult",
        "ShapeChange",
        "TensorRecord",
        "TensorSpec",
        "UnsupportedStateError",
        "UsageError",
        "Workspace",
        "WriteError",
        "__version__",
        "compare_architectures",
        "current_run",
        "log_metrics",
        "params",
        "read_metadata",
        "run_experiment",
    ]
    for name in expman.__all__:
        assert hasattr(expman, name), name


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_import_expman_and_the_cli_load_neither_numpy_nor_h5py() -> None:
    import subprocess
    import sys

    code = "import sys, expman, expman.cli; print('numpy' in sys.modules, 'h5py' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"]


def test_only_the_format_modules_import_h5py() -> None:
    users = sorted(
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "h5py" in imports_of(p)
    )
    assert users == ["checkpoints/_format.py", "checkpoints/_validate.py"]


def test_only_the_queue_imports_dask() -> None:
    users = sorted(
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if {"dask", "distributed"} & imports_of(p)
    )
    assert users == ["queue/_dask.py", "queue/_worker.py"]


def test_only_the_remote_package_imports_fsspec_s3fs_or_gitpython() -> None:
    for library, allowed in (("fsspec", "_store.py"), ("s3fs", None), ("git", "_git.py")):
        users = sorted(
            p.relative_to(PACKAGE).as_posix()
            for p in PACKAGE.rglob("*.py")
            if library in imports_of(p)
        )
        assert users == ([f"remote/{allowed}"] if allowed else []), library


def test_push_and_pull_are_not_imported_by_other_commands() -> None:
    import subprocess
    import sys

    code = "import sys, expman.cli; print(sorted({'fsspec', 'git'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["[]"]


def test_expman_run_imports_only_what_a_run_needs(workspace: Path) -> None:
    """A run without checkpoints: no numpy, h5py, tomlkit, fsspec or socket (the host name
    comes from os.uname)."""
    import subprocess
    import sys

    from tests.cli import expman

    assert expman(workspace, "new", "base").returncode == 0
    unwanted = ["fsspec", "h5py", "numpy", "socket", "tomlkit"]
    code = (
        "import atexit, sys; atexit.register(lambda: print(sorted(set(sys.modules) & "
        f"{set(unwanted)!r}), file=sys.stderr)); sys.argv = ['expman', 'run', 'base', '--', "
        "'true']; from expman.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=workspace, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "[]"


def test_the_architecture_comparison_is_pure() -> None:
    path = PACKAGE / "checkpoints" / "_architecture.py"
    assert imports_of(path) - {"expman"} <= {
        "__future__",
        "collections",
        "dataclasses",
        "hashlib",
        "json",
        "typing",
    }
    tree = ast.parse(path.read_text())
    own = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("expman")
    }
    assert own <= {"expman._text"}  # escaping names for one-line messages: pure too


def test_only_the_gitrepo_module_runs_git() -> None:
    users = sorted(
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if '"git"' in p.read_text() or "'git'" in p.read_text()
    )
    assert users == ["experiments/_gitrepo.py"]
    assert 'shutil.which("git")' in (PACKAGE / "experiments" / "_gitrepo.py").read_text()


def test_nothing_unpickles() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "pickle" not in imports_of(path), path
        assert "allow_pickle=True" not in text, path
