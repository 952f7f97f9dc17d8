"""``expman list --sort/--filter/--columns``: pick and order experiments by params and metrics.

A KEY names a metric (``accuracy``) or a parameter (``lr``,
``model.hidden_units``); ``metrics.KEY`` and ``params.KEY`` say which when
both exist. Per experiment a metric wins over a parameter of the same name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expman._errors import UsageError
from expman.experiments._config import parse_assignment

__all__ = ["Filter", "Row", "flatten", "lookup", "parse_filter", "select"]

_FILTER = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(<=|>=|!=|==|=|<|>)\s*(.+?)\s*")


@dataclass(frozen=True)
class Row:
    """One experiment: its metrics (latest run) and its parameters, flattened (``a.b``)."""

    name: str
    metrics: Mapping[str, float]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Filter:
    key: str
    op: str
    value: Any

    def accepts(self, row: Row) -> bool:
        found = lookup(row, self.key)
        if found is None:
            return False
        try:
            return bool(
                {
                    "<": lambda a, b: a < b,
                    "<=": lambda a, b: a <= b,
                    ">": lambda a, b: a > b,
                    ">=": lambda a, b: a >= b,
                    "=": lambda a, b: a == b,
                    "==": lambda a, b: a == b,
                    "!=": lambda a, b: a != b,
                }[self.op](found, self.value)
            )
        except TypeError:  # a number against a string: not a match
            return False


def parse_filter(text: str) -> Filter:
    """``lr<0.05``, ``accuracy>=0.9``, ``model.hidden_units==[20,20]``, ``optimizer=adam``."""
    match = _FILTER.fullmatch(text)
    if match is None:
        raise UsageError(
            f"invalid --filter {text!r}: expected KEY OP VALUE with OP one of "
            "< <= > >= = != (e.g. --filter 'lr<0.05')"
        )
    key, op, raw = match.groups()
    return Filter(key, op, parse_assignment(f"value={raw}").value)


def lookup(row: Row, key: str) -> Any:
    """The value of KEY for an experiment, or None."""
    if key.startswith("metrics."):
        return row.metrics.get(key[len("metrics.") :])
    if key.startswith("params."):
        return row.params.get(key[len("params.") :])
    if key in row.metrics:
        return row.metrics[key]
    return row.params.get(key)


def select(
    rows: Sequence[Row],
    *,
    filters: Sequence[Filter] = (),
    sort: str | None = None,
    lower_is_better: bool = False,
    reverse: bool = False,
) -> list[Row]:
    """Rows passing every filter, sorted by ``sort`` (missing values last).

    A metric sorts best first (``lower_is_better`` says its direction); a
    parameter ascending; ``reverse`` flips either.
    """
    kept = [row for row in rows if all(f.accepts(row) for f in filters)]
    if sort is None:
        return kept
    is_metric = not sort.startswith("params.") and any(
        lookup(Row(r.name, r.metrics, {}), sort) is not None for r in kept
    )
    descending = (is_metric and not lower_is_better) != reverse
    present = [r for r in kept if lookup(r, sort) is not None]
    missing = [r for r in kept if lookup(r, sort) is None]
    try:
        ordered = sorted(present, key=lambda r: _sortable(lookup(r, sort)), reverse=descending)
    except TypeError:
        raise UsageError(
            f"--sort {sort}: its values are of different kinds (numbers and text) and cannot "
            "be ordered"
        ) from None
    return ordered + missing


def _sortable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"hidden_units": [10]}}`` -> ``{"model.hidden_units": [10]}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
