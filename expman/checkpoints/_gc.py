"""Python's cyclic garbage collector, paused while a checkpoint is saved or restored.

Saving or restoring 10,000 tensors makes tens of thousands of small objects
(leaves, manifest entries, read requests); each few hundred of them start a
collection, and the older generations' collections walk every object the
training script holds. Paused, a 10,000-tensor restore took 80 ms instead of
119 ms (docs/benchmarks.md). Reference counting still frees everything at
once; only cycles wait, for the fraction of a second the call lasts.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collector_paused"]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for the block, unless the program paused it itself."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
