"""Names that end up in records: one line each, so they can never forge a trailer.

Metric names and parameter keys are quoted in commit subjects and in
``Key: value`` trailers. A name with a newline could add a line such as
``Status: succeeded`` to a failed run's record, so names with control
characters are refused where they come in (``log_metrics``, ``save``), and
whatever reaches a message is still escaped to one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from expman._errors import UsageError

__all__ = ["has_control_character", "one_line", "refuse_control_characters"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every control character escaped (``\\x0a``): always one line."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a newline, tab, carriage return or another control character."""
    return _CONTROL.search(text) is not None


def refuse_control_characters(names: Iterable[str], what: str) -> None:
    """Raise UsageError for the first name holding a control character (newline, tab, ...)."""
    for name in names:
        if has_control_character(name):
            raise UsageError(
                f"{what} name {name!r} contains a control character (newline, tab, ...): "
                "use printable names such as 'val_loss'"
            )
