"""JSON as expman writes it: always valid (RFC 8259), so NaN and infinities become null.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which most JSON
readers (``jq``, JavaScript, Go) refuse. Every record, ``--json`` output and
``events.jsonl`` line goes through :func:`dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite"]


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in lists and dicts too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (they become null)."""
    return json.dumps(finite(value), allow_nan=False, **options)
