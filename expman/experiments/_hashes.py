"""Digests of checkpoint files for run records: cached, and computed while the command runs.

A run record names each kept checkpoint with its size and BLAKE3 digest
(``expman._digest``), the digest ``expman pull`` checks a downloaded file
against. Hashing costs about 0.4 s of CPU per GiB here, so a run's
checkpoints are hashed as soon as they are committed,
on a low-priority thread while the command runs: the record then hashes only
what appeared at the very end. Committed checkpoint files never change (a save
never replaces one), so a digest is cached by file name, size and mtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from expman._digest import file_digest
from expman.checkpoints._layout import step_of_filename

__all__ = ["CheckpointHashes"]

# How often the directory is looked at while the command runs, in seconds.
_INTERVAL = 1.0
# The hashing thread's niceness: training, which shares the machine, goes first.
_NICENESS = 10


class CheckpointHashes:
    """The digests of checkpoint files, kept in a JSON cache file between runs."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._lock = threading.Lock()
        try:
            self._known: dict[str, list[Any]] = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._known = {}

    def of(self, file: Path) -> str:
        """The ``blake3:HEX`` digest of ``file``, from the cache if it is unchanged."""
        stat = file.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        with self._lock:
            known = self._known.get(file.name)
        if known and known[:2] == key:
            return str(known[2])
        digest = file_digest(file)
        with self._lock:
            self._known[file.name] = [*key, digest]
        return digest

    def save(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # only a cache
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            self.cache.write_text(json.dumps(self._known), encoding="utf-8")

    @contextlib.contextmanager
    def while_running(self, directory: Path) -> Iterator[None]:
        """Hash each checkpoint committed in ``directory`` while the block runs."""
        stop = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(directory, stop), name="expman-hashes", daemon=True
        )
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()

    def _watch(self, directory: Path, stop: threading.Event) -> None:
        with contextlib.suppress(OSError):  # Linux sets niceness per thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICENESS)
        while not stop.wait(_INTERVAL):
            if self._hash_committed(directory, stop):
                self.save()

    def _hash_committed(self, directory: Path, stop: threading.Event) -> bool:
        """Hash the committed checkpoint files not hashed yet; whether any was."""
        try:
            with os.scandir(directory) as entries:
                files = [
                    Path(entry.path)
                    for entry in entries
                    if step_of_filename(entry.name) is not None
                    and entry.is_file(follow_symlinks=False)
                ]
        except OSError:
            return False
        hashed = False
        for file in files:
            if stop.is_set():
                break
            with self._lock:
                before = self._known.get(file.name)
            with contextlib.suppress(OSError):  # removed by retention meanwhile
                self.of(file)
                hashed = hashed or self._known.get(file.name) != before
        return hashed
