"""Sweeps: one ``--set`` with several values (or a distribution) becomes many experiments.

``expman sweep lr-grid --from base --set lr=0.1,0.01 --set model.hidden_units=[10],[20]``
creates the ordinary experiments ``lr-grid-1`` .. ``lr-grid-4``, one branch per
combination, each with its values written into its ``expman.toml`` and a
``Sweep:`` trailer. The sweep itself is recorded at ``refs/expman/sweeps/NAME``:
a commit whose ``sweep.json`` lists the members and their values, created in
the same ``update-ref`` transaction as the branches (all or nothing).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expman._errors import ExperimentExistsError, ExperimentNotFoundError, InvalidAssignmentError
from expman.experiments._config import (
    CONFIG_NAME,
    Assignment,
    apply_assignments,
    parse_assignment,
    parse_config,
)
from expman.experiments._gitrepo import EMPTY_TREE
from expman.experiments._names import validate_name
from expman.experiments._records import sweep_member_message
from expman.experiments._workspace import Workspace

__all__ = [
    "SWEEP_REFS",
    "Distribution",
    "SweepAxis",
    "SweepMember",
    "SweepRecord",
    "create_sweep",
    "expand",
    "parse_axis",
    "read_sweep",
]

SWEEP_REFS = "refs/expman/sweeps/"
_DISTRIBUTION = re.compile(r"(loguniform|uniform|randint|choice)\((.*)\)", re.DOTALL)
_OPEN = {"[": "]", "{": "}"}


@dataclass(frozen=True)
class Distribution:
    """``loguniform(a,b)``, ``uniform(a,b)``, ``randint(a,b)`` (a..b inclusive), ``choice(...)``."""

    kind: str
    arguments: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.arguments)
        low, high = self.arguments
        if self.kind == "uniform":
            return rng.uniform(low, high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.randint(low, high)

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(json.dumps(a) for a in self.arguments)})"


@dataclass(frozen=True)
class SweepAxis:
    """One ``--set``: a dotted key and either its values (a grid axis) or a distribution."""

    key: tuple[str, ...]
    values: tuple[Any, ...] = ()
    distribution: Distribution | None = None

    @property
    def dotted(self) -> str:
        return ".".join(self.key)


def split_values(raw: str) -> list[str]:
    """Split at top-level commas: brackets, braces and quotes nest."""
    parts, depth, quote, start = [], [], "", 0
    for index, char in enumerate(raw):
        if quote:
            if char == quote and raw[index - 1] != "\\":
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in _OPEN:
            depth.append(_OPEN[char])
        elif depth and char == depth[-1]:
            depth.pop()
        elif char == "," and not depth:
            parts.append(raw[start:index])
            start = index + 1
    parts.append(raw[start:])
    return [part.strip() for part in parts]


def parse_axis(text: str) -> SweepAxis:
    """``lr=0.1,0.01`` or ``model.hidden_units=[10,10],[20,20]`` or ``lr=loguniform(1e-4,1e-1)``."""
    key, sep, raw = text.partition("=")
    raw = raw.strip()
    if not sep or not raw:
        parse_assignment(text)  # raises the error `expman new --set` gives
    parsed = _DISTRIBUTION.fullmatch(raw)
    if parsed is None:
        values = tuple(parse_assignment(f"{key}={part}").value for part in split_values(raw))
        return SweepAxis(parse_assignment(f"{key}=0").key, values=values)
    kind, inner = parsed.groups()
    arguments = tuple(parse_assignment(f"{key}={part}").value for part in split_values(inner))
    numbers = all(isinstance(a, int | float) and not isinstance(a, bool) for a in arguments)
    if kind == "choice":
        ok = len(arguments) >= 1
    elif kind == "randint":
        ok = len(arguments) == 2 and all(isinstance(a, int) for a in arguments)
        ok = ok and arguments[0] <= arguments[1]
    else:
        ok = len(arguments) == 2 and numbers and arguments[0] < arguments[1]
        ok = ok and (kind == "uniform" or arguments[0] > 0)
    if not ok:
        raise InvalidAssignmentError(
            f"invalid --set {text!r}: {kind} takes "
            + {
                "choice": "one or more values, e.g. choice(32,64)",
                "randint": "two integers LOW <= HIGH, e.g. randint(1,8)",
                "uniform": "two numbers LOW < HIGH, e.g. uniform(0.1,0.9)",
                "loguniform": "two positive numbers LOW < HIGH, e.g. loguniform(1e-4,1e-1)",
            }[kind]
        )
    return SweepAxis(parse_assignment(f"{key}=0").key, distribution=Distribution(kind, arguments))


def expand(axes: Sequence[SweepAxis], *, samples: int | None, seed: int) -> list[list[Assignment]]:
    """Every combination of the axes (the grid), or ``samples`` random draws with ``seed``.

    In the grid the first ``--set`` varies slowest. With ``samples``, a list of
    values is drawn from like ``choice``; draws depend on the seed alone.
    """
    if samples is None:
        random_axes = [a.dotted for a in axes if a.distribution is not None]
        if random_axes:
            raise InvalidAssignmentError(
                f"--set {random_axes[0]} is a distribution: give --samples N (and --seed S)"
            )
        grid = itertools.product(*(axis.values for axis in axes))
        return [[Assignment(a.key, v) for a, v in zip(axes, combo, strict=True)] for combo in grid]
    rng = random.Random(seed)
    drawn = []
    for _ in range(samples):
        drawn.append(
            [
                Assignment(
                    a.key, a.distribution.sample(rng) if a.distribution else rng.choice(a.values)
                )
                for a in axes
            ]
        )
    return drawn


@dataclass(frozen=True)
class SweepMember:
    name: str
    commit: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class SweepRecord:
    """What ``refs/expman/sweeps/NAME`` holds (its ``sweep.json``)."""

    name: str
    base: str | None
    source: str
    axes: tuple[str, ...]
    samples: int | None
    seed: int | None
    members: tuple[SweepMember, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.name,
            "base": self.base,
            "source": self.source,
            "set": list(self.axes),
            "samples": self.samples,
            "seed": self.seed,
            "members": [
                {"name": m.name, "commit": m.commit, "params": dict(m.params)} for m in self.members
            ],
        }


def create_sweep(
    ws: Workspace,
    name: str,
    *,
    base: str | None,
    assignments: Sequence[str],
    samples: int | None = None,
    seed: int | None = None,
) -> SweepRecord:
    """Create every member's branch and the sweep's record, all or none."""
    validate_name(name)
    axes = [parse_axis(text) for text in assignments]
    if not axes:
        raise InvalidAssignmentError(
            "a sweep needs at least one --set KEY=V1,V2 (or a distribution), e.g. --set lr=0.1,0.01"
        )
    if samples is not None and samples < 1:
        raise InvalidAssignmentError(f"--samples must be 1 or more, got {samples}")
    if samples is not None and seed is None:
        seed = random.SystemRandom().randrange(2**31)  # recorded, so the sweep can be redrawn
    combos = expand(axes, samples=samples, seed=seed or 0)
    names = [f"{name}-{number}" for number in range(1, len(combos) + 1)]
    for member in names:
        validate_name(member)
    ws.repo.check_identity()
    taken = [m for m in [name, *names] if ws.repo.resolve(str(ws.ref(m))) is not None]
    sweep_ref = f"{SWEEP_REFS}{name}"
    if ws.repo.resolve(sweep_ref) is not None or taken:
        what = f"experiment {taken[0]}" if taken else f"sweep {name}"
        raise ExperimentExistsError(f"{what} already exists: choose another sweep name than {name}")
    source = ws.source(base)
    texts = []
    for combo in combos:
        text, _ = apply_assignments(source.config_text, combo)
        parse_config(text)
        texts.append(text)
    trees = ws.repo.trees_with_root_files(
        source.tree, [{CONFIG_NAME: text.encode()} for text in texts]
    )
    members = []
    refs = {}
    for number, (member, combo, tree) in enumerate(zip(names, combos, trees, strict=True), 1):
        described = [f"{a.dotted} = {json.dumps(a.value)}" for a in combo]
        message = sweep_member_message(
            member,
            source.base,
            source.description,
            described,
            sweep=name,
            position=f"{number}/{len(names)}",
            seed=seed if samples is not None else None,
        )
        commit = ws.repo.commit_tree(tree, [source.commit], message)
        refs[str(ws.ref(member))] = commit
        members.append(SweepMember(member, commit, {a.dotted: a.value for a in combo}))
    record = SweepRecord(
        name=name,
        base=source.base,
        source=source.description,
        axes=tuple(assignments),
        samples=samples,
        seed=seed if samples is not None else None,
        members=tuple(members),
    )
    content = (json.dumps(record.to_json(), indent=2) + "\n").encode()
    tree = ws.repo.trees_with_root_files(EMPTY_TREE, [{"sweep.json": content}])[0]
    summary = f"sweep {name}: {len(members)} experiments from {source.description}\n"
    refs[sweep_ref] = ws.repo.commit_tree(tree, [], summary)
    ws.repo.create_refs(refs, what=f"sweep {name}")
    return record


def read_sweep(ws: Workspace, name: str) -> SweepRecord:
    """The sweep's record; ExperimentNotFoundError if there is no sweep of that name."""
    content = ws.repo.read_file(f"{SWEEP_REFS}{validate_name(name)}", "sweep.json")
    if content is None:
        known = [ref.ref[len(SWEEP_REFS) :] for ref in ws.repo.refs(SWEEP_REFS)]
        hint = f" (sweeps: {', '.join(known)})" if known else " (there are none yet)"
        raise ExperimentNotFoundError(
            f"no sweep named {name!r}{hint}: create one with expman sweep {name} --set KEY=V1,V2"
        )
    data = json.loads(content)
    return SweepRecord(
        name=data["sweep"],
        base=data["base"],
        source=data["source"],
        axes=tuple(data["set"]),
        samples=data["samples"],
        seed=data["seed"],
        members=tuple(SweepMember(m["name"], m["commit"], m["params"]) for m in data["members"]),
    )
