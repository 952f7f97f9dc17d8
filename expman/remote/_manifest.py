"""Manifests: what a push knew of an experiment's files, and their union as a reader sees it.

Pure data (no I/O): ``_store`` reads and writes them, push and pull compare them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from expman._digest import digest_fields, digest_from_fields
from expman._errors import RemoteIntegrityError

__all__ = ["MANIFEST_FORMAT", "FileEntry", "Manifest", "Manifests"]

# 3: digests are BLAKE3 or sha256, one key named after the algorithm (2: sha256 only)
MANIFEST_FORMAT = 3
_READABLE = (2, 3)


@dataclass(frozen=True)
class FileEntry:
    digest: str  # "blake3:HEX" or "sha256:HEX" (expman._digest)
    size: int


@dataclass(frozen=True)
class Manifest:
    """What one push knew of an experiment's files: path -> digest and size, and its commit."""

    experiment: str
    commit: str
    files: Mapping[str, FileEntry]
    pushed: str = ""  # UTC time of the push, ISO 8601: the newest manifest's logs win

    def to_json(self) -> bytes:
        data = {
            "format": MANIFEST_FORMAT,
            "experiment": self.experiment,
            "commit": self.commit,
            "pushed": self.pushed,
            "files": {
                path: {**digest_fields(e.digest), "size": e.size}
                for path, e in sorted(self.files.items())
            },
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, content: bytes, where: str) -> Manifest:
        try:
            data = json.loads(content)
            if isinstance(data["format"], int) and data["format"] > MANIFEST_FORMAT:
                raise RemoteIntegrityError(
                    f"the manifest {where} was written by a newer expman (format "
                    f"{data['format']}): upgrade expman to read it"
                )
            if data["format"] not in _READABLE:
                raise ValueError(f"format {data['format']!r}")
            files = {
                str(path): FileEntry(digest_from_fields(entry), int(entry["size"]))
                for path, entry in data["files"].items()
            }
            return cls(str(data["experiment"]), str(data["commit"]), files, str(data["pushed"]))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise RemoteIntegrityError(
                f"the manifest {where} is damaged ({error}): push the experiment again from "
                "a machine that has its files"
            ) from error


@dataclass(frozen=True)
class Manifests:
    """Every manifest pushed for one experiment, read as one: the union of their files."""

    experiment: str
    manifests: tuple[Manifest, ...]
    paths: tuple[str, ...]  # where each manifest lies on the store, in the same order

    def files(self) -> dict[str, FileEntry]:
        """Each path's entry; where manifests differ (a log that grew), the newest push's."""
        newest = sorted(self.manifests, key=lambda m: m.pushed)
        return {path: entry for manifest in newest for path, entry in manifest.files.items()}

    def names(self, path: str, entry: FileEntry) -> bool:
        """Whether any manifest names ``path`` with exactly this digest and size."""
        return any(manifest.files.get(path) == entry for manifest in self.manifests)

    def covers(self, files: Mapping[str, FileEntry]) -> bool:
        """Whether every (path, entry) of ``files`` is already named by some manifest."""
        return all(self.names(path, entry) for path, entry in files.items())

    def digests(self) -> set[str]:
        return {e.digest for manifest in self.manifests for e in manifest.files.values()}
