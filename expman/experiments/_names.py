"""Experiment names and the git refs that hold them.

An experiment ``wide`` is the branch ``exp/wide`` (``refs/heads/exp/wide``);
the prefix comes from ``expman.toml``. Names are checked against git's ref
rules and against anything that could escape a directory, since a name is
also a directory under ``.expman/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from expman._errors import InvalidNameError

__all__ = ["DEFAULT_PREFIX", "ExperimentRef", "validate_name"]

DEFAULT_PREFIX = "exp/"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_LENGTH = 100


def validate_name(name: str) -> str:
    """Return ``name`` if it can name an experiment, else raise :class:`InvalidNameError`.

    Allowed: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or
    digit, at most 100 characters, without ``..`` and not ending in ``.`` or
    ``.lock`` (git's rules). No ``/``, spaces or ``@`` (which separates a name
    from a run or step: ``wide@2``).
    """
    reason = None
    if not name:
        reason = "it is empty"
    elif len(name) > _MAX_LENGTH:
        reason = f"it is longer than {_MAX_LENGTH} characters"
    elif not _NAME.fullmatch(name):
        reason = "use letters, digits, '.', '_' and '-', starting with a letter or a digit"
    elif ".." in name or name.endswith((".", ".lock")):
        reason = "git refuses names containing '..' or ending in '.' or '.lock'"
    if reason:
        raise InvalidNameError(f"invalid experiment name {name!r}: {reason}")
    return name


@dataclass(frozen=True)
class ExperimentRef:
    """An experiment's branch: ``str(ref)`` and :meth:`from_ref` are inverses."""

    name: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_name(self.name)

    @property
    def branch(self) -> str:
        return f"{self.prefix}{self.name}"

    def __str__(self) -> str:
        return f"refs/heads/{self.branch}"

    @classmethod
    def from_ref(cls, ref: str, prefix: str = DEFAULT_PREFIX) -> ExperimentRef:
        head = f"refs/heads/{prefix}"
        if not ref.startswith(head):
            raise InvalidNameError(f"{ref!r} is not an experiment branch (under {head})")
        return cls(ref[len(head) :], prefix)
