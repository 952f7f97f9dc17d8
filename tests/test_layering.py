"""The tree is the architecture: a lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import expman

PACKAGE = Path(expman.__file__).parent

# Highest first. A module may import its own layer and the layers after it.
# Siblings: above experiments, below the cli, and never importing each other.
LAYERS = [
    "cli",
    "integrations",
    "review",
    "queue",
    "remote",
    "experiments",
    "checkpoints",
    "base",
]
SIBLINGS = {"review", "queue", "remote"}


def layer_of(module: str) -> str:
    """The layer of a module named like ``expman.checkpoints._format``."""
    parts = module.split(".")
    if parts[0] != "expman" or len(parts) == 1:
        return "base"
    top = parts[1]
    if top == "__main__":  # python -m expman: the command line
        return "cli"
    if top in ("cli", "review", "queue", "remote", "experiments", "checkpoints"):
        return top
    if top in ("torch", "lightning", "transformers"):
        return "integrations"
    return "base"  # _errors, _version


def expman_imports(path: Path) -> set[str]:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    tree = ast.parse(path.read_text())
    # Imports for type checkers only never run: _errors names ArchitectureDiff in types.
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("expman"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "expman":
                found.update(f"expman.{alias.name}" for alias in node.names)
            elif node.module.startswith("expman."):
                found.add(node.module)
    return {name for name in found if name != module}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    own = LAYERS.index(layer_of(module))
    upward = sorted(name for name in expman_imports(path) if LAYERS.index(layer_of(name)) < own)
    assert upward == [], f"{module} imports a higher layer"
    siblings = SIBLINGS - {layer_of(module)} if layer_of(module) in SIBLINGS else set()
    sideways = sorted(name for name in expman_imports(path) if layer_of(name) in siblings)
    assert sideways == [], f"{module} imports a sibling subsystem"


def test_the_layer_table_knows_every_subpackage() -> None:
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert subpackages == [
        "checkpoints",
        "cli",
        "experiments",
        "queue",
        "remote",
        "review",
        "torch",
    ]


def test_only_the_cli_imports_typer() -> None:
    def imports_typer(path: Path) -> bool:
        tree = ast.parse(path.read_text())
        return any(
            (isinstance(node, ast.Import) and any(a.name == "typer" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("typer"))
            for node in ast.walk(tree)
        )

    users = {p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py") if imports_typer(p)}
    assert users == {"cli"}


def test_review_and_remote_do_not_import_each_other() -> None:
    for side, other in (("review", "remote"), ("remote", "review")):
        for path in (PACKAGE / side).glob("*.py"):
            assert not any(layer_of(n) == other for n in expman_imports(path)), path
