"""Remotes in ``expman.toml``: ``[remote.NAME]`` with a store URL, a git remote and options.

Credentials are never stored here: they come from the environment or from
fsspec's and the storage library's usual configuration. Options that look like
credentials are refused when a remote is added.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expman._errors import ConfigError, UsageError
from expman.experiments._config import CONFIG_NAME
from expman.experiments._names import validate_name

__all__ = ["RemoteConfig", "add_remote", "choose_remote", "read_remotes", "remove_remote"]

_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")


@dataclass(frozen=True)
class RemoteConfig:
    """A remote: where files go (``url``, any fsspec URL) and which git remote takes branches."""

    name: str
    url: str
    git_remote: str = "origin"
    options: Mapping[str, Any] = field(default_factory=dict)


def read_remotes(root: Path) -> list[RemoteConfig]:
    """The remotes of the checkout's ``expman.toml``, in file order."""
    path = root / CONFIG_NAME
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no {CONFIG_NAME} in {root}: run `expman init` there first") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML ({error}): fix it and retry") from error
    table = data.get("remote", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [remote] must be a table of [remote.NAME] tables")
    remotes = []
    for name, entry in table.items():
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise ConfigError(f'{path}: [remote.{name}] needs url = "..." (a path or fsspec URL)')
        git_remote = entry.get("git_remote", "origin")
        options = entry.get("options", {})
        if not isinstance(git_remote, str) or not isinstance(options, dict):
            raise ConfigError(
                f"{path}: [remote.{name}] git_remote must be a string and options a table"
            )
        _refuse_credentials(options, f"{path}: [remote.{name}] options")
        if "://" not in url and not Path(url).is_absolute():
            url = os.path.normpath(root / url)  # a directory relative to the checkout, from any cwd
        remotes.append(RemoteConfig(name, url, git_remote, options))
    return remotes


def choose_remote(root: Path, name: str | None) -> RemoteConfig:
    """The remote called ``name``; without a name, the only one (or the one called origin)."""
    remotes = read_remotes(root)
    if not remotes:
        raise ConfigError(
            f"no remote in {CONFIG_NAME}: add one with expman remote add origin s3://bucket/path "
            "(or a directory)"
        )
    by_name = {remote.name: remote for remote in remotes}
    if name is not None:
        if name not in by_name:
            raise ConfigError(
                f"no remote named {name!r} in {CONFIG_NAME} (remotes: {', '.join(by_name)}): "
                f"add it with expman remote add {name} URL"
            )
        return by_name[name]
    if len(remotes) == 1:
        return remotes[0]
    if "origin" in by_name:
        return by_name["origin"]
    raise UsageError(
        f"{CONFIG_NAME} names several remotes ({', '.join(by_name)}): choose one with --remote"
    )


def add_remote(
    root: Path, name: str, url: str, *, git_remote: str, options: Mapping[str, Any]
) -> RemoteConfig:
    """Add ``[remote.NAME]`` to the checkout's ``expman.toml``, keeping its layout."""
    import tomlkit

    validate_name(name)
    if not url:
        raise UsageError("the remote's URL is empty: give a directory or an fsspec URL")
    _refuse_credentials(options, "expman remote add --option")
    path = root / CONFIG_NAME
    existing = {remote.name for remote in read_remotes(root)}
    if name in existing:
        raise UsageError(
            f"remote {name} already exists in {CONFIG_NAME}: remove it first with "
            f"expman remote remove {name}"
        )
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    if "remote" not in document:
        document["remote"] = tomlkit.table(is_super_table=True)
    entry = tomlkit.table()
    entry["url"] = url
    entry["git_remote"] = git_remote
    if options:
        inline = tomlkit.inline_table()
        inline.update(dict(options))
        entry["options"] = inline
    document["remote"][name] = entry
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return RemoteConfig(name, url, git_remote, dict(options))


def remove_remote(root: Path, name: str) -> RemoteConfig:
    import tomlkit

    remote = choose_remote(root, name)
    path = root / CONFIG_NAME
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    table = document["remote"]
    del table[name]
    if not table:
        del document["remote"]
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return remote


def _refuse_credentials(options: Mapping[str, Any], where: str) -> None:
    for key in options:
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS):
            raise ConfigError(
                f"{where}: {key!r} looks like a credential, and expman never stores "
                "credentials: set them in the environment (AWS_ACCESS_KEY_ID, ...) or in "
                "the storage library's own configuration instead"
            )
