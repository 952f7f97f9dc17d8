"""The object store: content-addressed files and one manifest per experiment, through fsspec.

Layout under the store's URL::

    objects/sha256/ab/abcdef...     a file, named by the sha256 of its bytes
    manifests/NAME.json             what a pushed experiment's files are: path -> digest, size

Objects go up first and a manifest last, since object stores have no atomic
rename: a reader trusts only what a manifest names, so a push interrupted at
any point leaves nothing that a pull would use half-written. An object that is
already there (same name, same size) is never sent again, so a second push
resumes where the first stopped. This is the only module that imports fsspec.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.callbacks import Callback

from expman._errors import ExpmanError, RemoteError, RemoteIntegrityError
from expman.remote._config import RemoteConfig
from expman.remote._progress import Progress

__all__ = ["MANIFEST_FORMAT", "FileEntry", "Manifest", "ObjectStore"]

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What the store holds for one experiment: its files by path, and the commit pushed."""

    experiment: str
    commit: str
    files: Mapping[str, FileEntry]

    def to_json(self) -> bytes:
        data = {
            "format": MANIFEST_FORMAT,
            "experiment": self.experiment,
            "commit": self.commit,
            "files": {
                path: {"sha256": e.sha256, "size": e.size} for path, e in sorted(self.files.items())
            },
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, content: bytes, where: str) -> Manifest:
        try:
            data = json.loads(content)
            if data["format"] != MANIFEST_FORMAT:
                raise ValueError(f"format {data['format']!r}")
            files = {
                str(path): FileEntry(str(entry["sha256"]), int(entry["size"]))
                for path, entry in data["files"].items()
            }
            return cls(str(data["experiment"]), str(data["commit"]), files)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise RemoteIntegrityError(
                f"the manifest {where} is damaged ({error}): push the experiment again from "
                "a machine that has its files"
            ) from error


class ObjectStore:
    """One remote's store, opened through fsspec with the remote's options."""

    def __init__(self, remote: RemoteConfig) -> None:
        self.url = remote.url
        with self._errors("open"):
            self.fs, root = fsspec.core.url_to_fs(remote.url, **dict(remote.options))
        self.root = root.rstrip("/")
        self.local = "file" in _protocols(self.fs)
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)

    def object_path(self, digest: str) -> str:
        return f"{self.root}/objects/sha256/{digest[:2]}/{digest}"

    def manifest_path(self, experiment: str) -> str:
        return f"{self.root}/manifests/{experiment}.json"

    # -- manifests --------------------------------------------------------------------

    def read_manifest(self, experiment: str) -> Manifest | None:
        """The experiment's manifest, or None if it was never pushed."""
        path = self.manifest_path(experiment)
        with self._errors("read a manifest from"):
            try:
                content = self.fs.cat_file(path)
            except FileNotFoundError:
                return None
        return Manifest.from_json(content, f"{self.url}/manifests/{experiment}.json")

    def write_manifest(self, manifest: Manifest) -> None:
        path = self.manifest_path(manifest.experiment)
        with self._errors("write a manifest to"):
            if self.local:  # a directory: write beside, then rename (atomic)
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                temporary = f"{path}.tmp"
                self.fs.pipe_file(temporary, manifest.to_json())
                self.fs.mv(temporary, path)
            else:  # an object store: a PUT is all or nothing
                self.fs.pipe_file(path, manifest.to_json())

    # -- objects ----------------------------------------------------------------------

    def missing(self, entries: Sequence[FileEntry]) -> list[FileEntry]:
        """The entries whose object is not on the store complete (absent or another size)."""
        absent = []
        with self._errors("look up objects on"):
            for entry in entries:
                try:
                    size = self.fs.size(self.object_path(entry.sha256))
                except FileNotFoundError:
                    size = None
                if size != entry.size:
                    absent.append(entry)
        return absent

    def upload(
        self, files: Sequence[tuple[Path, FileEntry]], progress: Progress, label: str
    ) -> None:
        """Send each local file to its content address (all at once, as fsspec batches them)."""
        if not files:
            return
        sources = [str(path) for path, _ in files]
        targets = [self.object_path(entry.sha256) for _, entry in files]
        if self.local:
            for target in {t.rsplit("/", 1)[0] for t in targets}:
                self.fs.makedirs(target, exist_ok=True)
        progress.start(label, sum(entry.size for _, entry in files))
        try:
            with self._errors("upload to"):
                self.fs.put(sources, targets, callback=_BytesCallback(progress))
        finally:
            progress.finish()

    def download(
        self, objects: Sequence[tuple[FileEntry, Path]], progress: Progress, label: str
    ) -> None:
        """Fetch objects into local files (temporary names the caller verifies and commits)."""
        if not objects:
            return
        sources = [self.object_path(entry.sha256) for entry, _ in objects]
        targets = [str(path) for _, path in objects]
        progress.start(label, sum(entry.size for entry, _ in objects))
        try:
            with self._errors("download from"):
                self.fs.get(sources, targets, callback=_BytesCallback(progress))
        finally:
            progress.finish()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Every failure of the storage library as one line that says what to do."""
        try:
            yield
        except ExpmanError:
            raise
        except FileNotFoundError as error:
            raise RemoteError(
                f"cannot {what} {self.url}: {_first_line(error)} (does the bucket or directory "
                "exist? create it, or fix the URL with expman remote remove/add)"
            ) from error
        except PermissionError as error:
            raise RemoteError(
                f"cannot {what} {self.url}: access denied ({_first_line(error)}): check the "
                "credentials in your environment or the storage library's configuration"
            ) from error
        except ImportError as error:
            raise RemoteError(
                f"cannot {what} {self.url}: {_first_line(error)}: install the storage "
                "library for this URL (pip install 'expman[s3]' for s3://)"
            ) from error
        except Exception as error:
            name = type(error).__name__
            hint = (
                "set credentials in your environment (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY for S3) or the storage library's configuration"
                if "Credentials" in name
                else "check the URL, the endpoint and the network, then retry (a push "
                "resumes where it stopped)"
            )
            raise RemoteError(
                f"cannot {what} {self.url} ({name}: {_first_line(error)}): {hint}"
            ) from error


class _BytesCallback(Callback):  # type: ignore[misc]
    """fsspec's per-file callbacks, summed into one byte count."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.lock = threading.Lock()

    def branched(self, path_1: Any, path_2: Any, **kwargs: Any) -> Callback:
        return _FileCallback(self)

    def call(self, *args: Any, **kwargs: Any) -> None:
        """The parent counts files; the bar counts bytes (from the branches)."""


class _FileCallback(Callback):  # type: ignore[misc]
    def __init__(self, parent: _BytesCallback) -> None:
        super().__init__()
        self.parent = parent
        self.reported = 0

    def call(self, *args: Any, **kwargs: Any) -> None:
        step = self.value - self.reported
        if step > 0:
            self.reported = self.value
            with self.parent.lock:
                self.parent.progress.advance(step)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
