"""Plain-text tables and JSON: what the commands print (no truncation, pipe-friendly)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer

from expman._json import dumps

__all__ = ["echo_json", "format_number", "table"]


def echo_json(data: Any) -> None:
    """Valid JSON (RFC 8259): NaN and infinities are printed as null."""
    typer.echo(dumps(data, indent=2, sort_keys=True, default=str))


def format_number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; never cut."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        for line in (header, *rows)
    ]
    return "\n".join(lines)


def note(text: str) -> None:
    print(f"expman: {text}", file=sys.stderr)
