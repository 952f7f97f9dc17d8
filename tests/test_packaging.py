"""Packaging follows the tree: every folder of the package is listed, so setuptools is quiet."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_package_folder_is_in_the_packages_list() -> None:
    # A folder missing from `packages` makes setuptools print ~40 lines of
    # "Package would be ignored" warnings on every `pip install .`.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(path.relative_to(ROOT).parts)
        for path in (ROOT / "expman").rglob("*")
        if path.is_dir() and path.name != "__pycache__"
    } | {"expman"}
    folders |= {
        ".".join(("expman", "templates", *path.relative_to(ROOT / "templates").parts))
        for path in (ROOT / "templates").rglob("*")
        if path.is_dir() and path.name != "__pycache__"
    } | {"expman.templates"}
    assert sorted(folders) == sorted(listed)
