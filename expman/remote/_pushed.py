"""What this machine last pushed to a store, so that a push with nothing new asks it nothing.

``.expman/remote/REMOTE.json`` holds, for the store's URL, each experiment's
fingerprint (its commit and files as pushed, once the push succeeded) and the
digests of its logs by size and modification time. A push whose experiment
has the same fingerprint and whose branch is where the remote has it sends
nothing and makes no request; a log whose size and time did not change is not
hashed again. Deleting the file makes the next push compare with the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from expman.checkpoints._durable import write_text_atomically
from expman.remote._manifest import FileEntry

__all__ = ["PushMemory", "fingerprint"]

_FORMAT = 2  # 2: digests as "ALGORITHM:HEX" (1: bare sha256 hex, forgotten on reading)


def fingerprint(commit: str, files: Mapping[str, FileEntry]) -> str:
    """One digest of what a push sends for an experiment: its commit and its files."""
    listing = {path: [e.digest, e.size] for path, e in sorted(files.items())}
    text = json.dumps({"commit": commit, "files": listing}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class PushMemory:
    """This machine's memory of its pushes to one store (a cache: losing it costs time only)."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        self.pushed: dict[str, str] = {}
        self.digests: dict[str, tuple[int, int, str]] = {}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["format"] == _FORMAT and data["url"] == url:
                self.pushed = {str(k): str(v) for k, v in data["pushed"].items()}
                self.digests = {
                    str(k): (int(v[0]), int(v[1]), str(v[2])) for k, v in data["digests"].items()
                }

    def digest(self, path: Path, size: int, mtime_ns: int) -> str | None:
        known = self.digests.get(str(path))
        return known[2] if known and known[:2] == (size, mtime_ns) else None

    def remember_digest(self, path: Path, size: int, mtime_ns: int, digest: str) -> None:
        self.digests[str(path)] = (size, mtime_ns, digest)

    def save(self) -> None:
        digests = {k: list(v) for k, v in sorted(self.digests.items()) if Path(k).exists()}
        data = {"format": _FORMAT, "url": self.url, "pushed": self.pushed, "digests": digests}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps(data, sort_keys=True) + "\n")
