"""``expman.toml``: the command a run executes, its parameters and checkpoint policy.

Read with :mod:`tomllib`; edited (``--set``) with tomlkit, which keeps the
user's comments and layout, so that a parameter change is a one-line diff.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import stat
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from expman._errors import ConfigError, InvalidAssignmentError
from expman.checkpoints._policy import CheckpointPolicy
from expman.experiments._names import DEFAULT_PREFIX

__all__ = [
    "CONFIG_NAME",
    "Assignment",
    "AssignmentResult",
    "WorkspaceConfig",
    "apply_assignments",
    "decode_config",
    "default_config_text",
    "iso_dates",
    "parse_assignment",
    "parse_config",
    "read_config",
]

CONFIG_NAME = "expman.toml"
MAX_DEPTH = 100  # tomlkit's own limit for nested values
_MAX_SIZE = 16 * 1024 * 1024
_KEY_PART = re.compile(r"[A-Za-z0-9_-]+")
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]*")


@dataclass(frozen=True)
class WorkspaceConfig:
    """The parsed ``expman.toml``."""

    command: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    policy: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    branch_prefix: str = DEFAULT_PREFIX
    key_metric: str | None = None
    key_metric_mode: Literal["min", "max"] = "min"


def default_config_text(command: str = "python train.py") -> str:
    return f"""\
# expman: what a run executes, with which parameters, and how it checkpoints.
# Each experiment is a branch (exp/NAME) holding its own copy of this file.

[run]
command = {_toml_string(command)}

[params]
# Read in the training script with expman.params(); change per experiment with
# `expman new NAME --set key=value`.

[checkpoints]
save_every_secs = 600
keep_max = 5

[experiments]
branch_prefix = "exp/"
# key_metric = "loss"      # shown by `expman list`
# key_metric_mode = "min"  # or "max"
"""


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def read_config(path: Path) -> str:
    """The text of ``expman.toml``; :class:`ConfigError` unless it is a readable UTF-8 file.

    Opened without blocking and checked to be a regular file, so that a FIFO
    or a device in its place is refused instead of waited on.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(
            f"no {CONFIG_NAME} in {path.parent}: run `expman init` there first"
        ) from None
    except IsADirectoryError:
        raise ConfigError(_not_a_file(path, "a directory")) from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(_not_a_file(path, "a directory"))
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
            raise ConfigError(_not_a_file(path, kind))
        if info.st_size > _MAX_SIZE:
            raise ConfigError(f"{path} is larger than {_MAX_SIZE // 2**20} MiB: is it expman.toml?")
        with open(descriptor, "rb", closefd=False) as file:
            content = file.read(_MAX_SIZE + 1)
    finally:
        os.close(descriptor)
    return decode_config(content, str(path))


def _not_a_file(path: Path, kind: str) -> str:
    return f"{path} is {kind}, not a file: make it a TOML file (expman init writes one)"


def decode_config(content: bytes, source: str) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source} is not UTF-8 text (byte 0x{content[error.start]:02x} at offset "
            f"{error.start}): save it as UTF-8"
        ) from None


def _load_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads`` with the limits of :data:`MAX_DEPTH` and of long integers.

    Raises ValueError with a message for the user; :class:`tomllib.TOMLDecodeError` is one.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except RecursionError:
        raise ValueError(f"nests values more than {MAX_DEPTH} levels deep") from None
    except ValueError:  # only int() raises other ValueErrors: too many digits
        raise ValueError(
            f"an integer has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if _depth(data) > MAX_DEPTH + 1:  # + 1: the document itself
        raise ValueError(f"nests values more than {MAX_DEPTH} levels deep")
    return data


def _depth(value: Any) -> int:
    """How deeply lists and tables nest in ``value`` (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _load_config_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return _load_toml(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML ({error}): fix it and retry") from error
    except ValueError as error:
        if "levels deep" in str(error):
            raise ConfigError(f"{source} {error}: flatten it") from None
        raise ConfigError(
            f"{source} is not valid TOML ({error}): quote it to keep it as text"
        ) from None


def parse_config(text: str, source: str = CONFIG_NAME) -> WorkspaceConfig:
    """Parse ``expman.toml``; every problem is a :class:`ConfigError` naming the file."""
    data = _load_config_toml(text, source)
    run = _table(data, "run", source)
    experiments = _table(data, "experiments", source)
    command = run.get("command", [])
    if isinstance(command, str):
        try:
            command = tuple(shlex.split(command))
        except ValueError as error:
            raise ConfigError(f"{source}: [run] command cannot be split ({error})") from error
    elif isinstance(command, list) and all(isinstance(c, str) for c in command):
        command = tuple(command)
    else:
        raise ConfigError(f"{source}: [run] command must be a string or a list of strings")
    if any("\0" in part for part in command):
        raise ConfigError(f"{source}: [run] command contains a NUL character: remove it")
    try:
        policy = CheckpointPolicy.from_mapping(_table(data, "checkpoints", source))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: [checkpoints] {error}") from error
    prefix = experiments.get("branch_prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not re.fullmatch(r"([A-Za-z0-9_-]+/)+", prefix):
        raise ConfigError(
            f"{source}: [experiments] branch_prefix must look like 'exp/', got {prefix!r}"
        )
    mode = experiments.get("key_metric_mode", "min")
    if mode not in ("min", "max"):
        raise ConfigError(f"{source}: [experiments] key_metric_mode must be 'min' or 'max'")
    key_metric = experiments.get("key_metric")
    return WorkspaceConfig(
        command=command,
        params=iso_dates(_table(data, "params", source)),
        policy=policy,
        branch_prefix=prefix,
        key_metric=str(key_metric) if key_metric else None,
        key_metric_mode=mode,
    )


def iso_dates(value: Any) -> Any:
    """TOML dates, times and datetimes (in tables and arrays too) as ISO 8601 strings.

    Parameters travel as JSON (records, the run's environment), which has no
    date type: ``1979-05-27T07:32:00Z`` becomes ``"1979-05-27T07:32:00+00:00"``.
    """
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dict):
        return {key: iso_dates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [iso_dates(item) for item in value]
    return value


def _table(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return value


@dataclass(frozen=True)
class Assignment:
    """``--set model.hidden_units=[20,20]``: a dotted key under ``[params]`` and a value."""

    key: tuple[str, ...]
    value: Any

    @property
    def dotted(self) -> str:
        return ".".join(self.key)


def parse_assignment(text: str) -> Assignment:
    """Parse ``KEY=VALUE``; VALUE is TOML (a bare word is taken as a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = tuple(key.split("."))
    if not sep or not key or not all(_KEY_PART.fullmatch(p) for p in parts):
        raise InvalidAssignmentError(
            f"invalid --set {_shorten(text)!r}: expected KEY=VALUE with KEY a dotted name under "
            "[params], e.g. --set model.hidden_units=[20,20]"
        )
    raw = raw.strip()
    try:
        value = _load_toml(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        if not _BARE_WORD.fullmatch(raw):
            raise InvalidAssignmentError(
                f"invalid --set {_shorten(text)!r}: {_shorten(raw)!r} is not a TOML value; "
                f"quote text, e.g. --set {key}='\"{_shorten(raw)}\"'"
            ) from None
        value = raw
    except ValueError as error:
        reason = str(error).replace("nests values", "the value nests")
        hint = "" if "levels deep" in reason else ": quote it to keep it as text"
        raise InvalidAssignmentError(f"invalid --set {_shorten(text)!r}: {reason}{hint}") from None
    return Assignment(parts, iso_dates(value))


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit + 10 else f"{text[:limit]}..."


@dataclass(frozen=True)
class AssignmentResult:
    assignment: Assignment
    existed: bool
    old: Any


def apply_assignments(
    text: str, assignments: Sequence[Assignment], source: str = CONFIG_NAME
) -> tuple[str, list[AssignmentResult]]:
    """Set each value under ``[params]`` in the TOML text, keeping everything else."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    _load_config_toml(text, source)  # tomllib's errors, and its limits, first
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as error:
        raise ConfigError(f"{source} is not valid TOML ({error}): fix it and retry") from error
    results = []
    for assignment in assignments:
        container: Any = document
        path = ["params", *assignment.key[:-1]]
        for depth, part in enumerate(path):
            if part not in container:
                container[part] = tomlkit.table()
            container = container[part]
            if not isinstance(container, dict):
                where = ".".join(path[: depth + 1])
                raise InvalidAssignmentError(
                    f"cannot set {assignment.dotted}: {where} in {source} is a value, not a table"
                )
        leaf = assignment.key[-1]
        existed = leaf in container
        old = container[leaf].unwrap() if existed else None
        container[leaf] = assignment.value
        results.append(AssignmentResult(assignment, existed, old))
    return tomlkit.dumps(document), results
