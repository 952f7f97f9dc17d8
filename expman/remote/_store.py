"""The object store: content-addressed files and immutable manifests, through fsspec.

Layout under the store's URL::

    objects/blake3/ab/abcdef...          a file, named by the BLAKE3 digest of its bytes
    objects/sha256/ab/abcdef...          (or by its sha256, as earlier versions named them)
    manifests/NAME/<sha256>.json         what a push knew of an experiment's files,
                                         named by the sha256 of its own bytes

Objects go up first and a manifest last, since object stores have no atomic
rename: a reader trusts only what a manifest names, so a push interrupted at
any point leaves nothing that a pull would use half-written. A manifest is
never rewritten: each push that has something new writes one more, and a
reader takes the union of an experiment's manifests. Two pushes at the same
time each add their own manifest, so neither loses the other's entries (there
is no read-then-write to race). An object that is already there (same name,
same size) is never sent again, so a second push resumes where the first
stopped. This is the only module that imports fsspec.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.callbacks import Callback

from expman._digest import ALGORITHMS as DIGEST_ALGORITHMS
from expman._errors import ExpmanError, RemoteError, RemoteIntegrityError
from expman.remote._config import RemoteConfig
from expman.remote._manifest import FileEntry, Manifest, Manifests
from expman.remote._progress import Progress

__all__ = ["ObjectStore", "StoredObject"]

# Requests in flight at once for small objects (manifests, lookups), as s3fs batches them.
_CONCURRENCY = 16
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class StoredObject:
    """An object or manifest on the store, as a listing shows it."""

    path: str
    size: int
    modified: float | None  # seconds since the epoch; None where the store does not say


class ObjectStore:
    """One remote's store, opened through fsspec with the remote's options."""

    def __init__(self, remote: RemoteConfig, *, cache: Path | None = None) -> None:
        """``cache``: a local directory of manifests already read (immutable, so never stale)."""
        self.url = remote.url
        self.cache = cache
        with self._errors("open"):
            self.fs, root = fsspec.core.url_to_fs(remote.url, **dict(remote.options))
        self.root = root.rstrip("/")
        self.local = "file" in _protocols(self.fs)
        _quiet_background_failures(self.fs)
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)

    def object_path(self, digest: str) -> str:
        """Where the object of an ``ALGORITHM:HEX`` digest (checked hex: expman._digest) lies."""
        algorithm, _, value = digest.partition(":")
        return f"{self.root}/objects/{algorithm}/{value[:2]}/{value}"

    @staticmethod
    def digest_of_object(path: str) -> str:
        """The digest an object's path names (``object_path`` read backwards)."""
        parts = path.rsplit("/", 3)
        return f"{parts[-3]}:{parts[-1]}"

    def manifest_directory(self, experiment: str) -> str:
        return f"{self.root}/manifests/{experiment}"

    # -- manifests --------------------------------------------------------------------

    def read_manifests(self, experiments: Sequence[str] | None) -> dict[str, Manifests]:
        """The manifests of ``experiments`` (all when None), read concurrently.

        One listing of ``manifests/`` for many experiments (one per experiment for
        a few), then every manifest not in the local cache fetched at once. An
        experiment never pushed is absent from the result.
        """
        with self._errors("read a manifest from"):
            paths = self._manifest_paths(experiments)
            cached = {path: self._cached(path) for path in paths}
            contents = self._cat([path for path, content in cached.items() if content is None])
        found: dict[str, list[tuple[Manifest, str]]] = {}
        for path in paths:
            content = cached[path] or contents[path]
            experiment, name = path[len(self.root) + len("/manifests/") :].rsplit("/", 1)
            where = f"{self.url}/manifests/{experiment}/{name}"
            if cached[path] is None:
                self._cache(name, content)
            if hashlib.sha256(content).hexdigest() + ".json" != name:
                raise RemoteIntegrityError(
                    f"the manifest {where} is damaged (its bytes do not match its name): push "
                    "the experiment again from a machine that has its files"
                )
            manifest = Manifest.from_json(content, where)
            found.setdefault(experiment, []).append((manifest, path))
        return {
            name: Manifests(name, tuple(m for m, _ in items), tuple(p for _, p in items))
            for name, items in sorted(found.items())
        }

    def _cached(self, path: str) -> bytes | None:
        """A manifest's bytes from the local cache, if there and intact."""
        if self.cache is None:
            return None
        name = path.rsplit("/", 1)[-1]
        try:
            content = (self.cache / name).read_bytes()
        except OSError:
            return None
        return content if hashlib.sha256(content).hexdigest() + ".json" == name else None

    def _cache(self, name: str, content: bytes) -> None:
        """Keep a manifest read from the store (no fsync: a torn copy fails its digest)."""
        if self.cache is None or hashlib.sha256(content).hexdigest() + ".json" != name:
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        temporary = self.cache / f".{name}.tmp-{os.getpid()}"
        temporary.write_bytes(content)
        os.replace(temporary, self.cache / name)

    def write_manifest(self, manifest: Manifest) -> str:
        """Add a manifest, named by its own digest (never replacing one); return that name."""
        content = manifest.to_json()
        name = hashlib.sha256(content).hexdigest() + ".json"
        path = f"{self.manifest_directory(manifest.experiment)}/{name}"
        with self._errors("write a manifest to"):
            if self.local:  # a directory: write beside, then rename (atomic)
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                temporary = f"{path}.tmp"
                self.fs.pipe_file(temporary, content)
                self.fs.mv(temporary, path)
            else:  # an object store: a PUT is all or nothing
                self.fs.pipe_file(path, content)
        return name

    def _manifest_paths(self, experiments: Sequence[str] | None) -> list[str]:
        if experiments is None or len(experiments) > _CONCURRENCY:
            wanted = None if experiments is None else set(experiments)
            paths = self._find(f"{self.root}/manifests")
            return [p for p in paths if wanted is None or p.rsplit("/", 2)[-2] in wanted]
        listings = _parallel(lambda e: self._find(self.manifest_directory(e)), experiments)
        return [path for listing in listings for path in listing]

    def _find(self, directory: str) -> list[str]:
        try:
            paths: list[str] = self.fs.find(directory)
        except FileNotFoundError:
            return []
        return sorted(p for p in paths if p.endswith(".json"))

    def _cat(self, paths: list[str]) -> dict[str, bytes]:
        """Many small files at once (a list makes fsspec answer with a dict, concurrently)."""
        contents: dict[str, bytes] = self.fs.cat(paths, on_error="raise") if paths else {}
        return {path: contents[self.fs._strip_protocol(path)] for path in paths}

    # -- objects ----------------------------------------------------------------------

    def missing(self, entries: Sequence[FileEntry]) -> list[FileEntry]:
        """The entries whose object is not on the store complete (absent or another size)."""

        def size(entry: FileEntry) -> int | None:
            try:
                return int(self.fs.size(self.object_path(entry.digest)))
            except FileNotFoundError:
                return None

        with self._errors("look up objects on"):
            sizes = _parallel(size, entries)
        return [entry for entry, found in zip(entries, sizes, strict=True) if found != entry.size]

    def list_manifests(self) -> list[StoredObject]:
        with self._errors("list the manifests of"):
            return self._listing(f"{self.root}/manifests")

    def list_objects(self) -> list[StoredObject]:
        with self._errors("list the objects of"):
            return [
                found
                for algorithm in DIGEST_ALGORITHMS
                for found in self._listing(f"{self.root}/objects/{algorithm}")
            ]

    def delete(self, paths: Sequence[str]) -> None:
        if paths:
            with self._errors("delete from"):
                self.fs.rm(list(paths))

    def upload(
        self, files: Sequence[tuple[Path, FileEntry]], progress: Progress, label: str
    ) -> None:
        """Send each local file to its content address (all at once, as fsspec batches them)."""
        if not files:
            return
        sources = [str(path) for path, _ in files]
        targets = [self.object_path(entry.digest) for _, entry in files]
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
    ) -> Generator[tuple[FileEntry, Path]]:
        """Fetch objects into local files, yielding each as soon as it is complete.

        Several files download at once while the caller checks the ones already
        here, so verifying overlaps the transfer. Local paths are temporary
        names the caller verifies and commits.
        """
        if not objects:
            return
        callback = _BytesCallback(progress)

        def fetch(item: tuple[FileEntry, Path]) -> tuple[FileEntry, Path]:
            entry, target = item
            source = self.object_path(entry.digest)
            self.fs.get_file(source, str(target), callback=callback.branched(source, target))
            return item

        progress.start(label, sum(entry.size for entry, _ in objects))
        try:
            with (
                self._errors("download from"),
                ThreadPoolExecutor(min(len(objects), 8), "expman-download") as pool,
            ):
                futures = [pool.submit(fetch, item) for item in objects]
                try:
                    for future in as_completed(futures):
                        yield future.result()
                finally:
                    for future in futures:
                        future.cancel()
        finally:
            progress.finish()

    def _listing(self, directory: str) -> list[StoredObject]:
        try:
            infos: dict[str, dict[str, Any]] = self.fs.find(directory, detail=True)
        except FileNotFoundError:
            return []
        return [
            StoredObject(path, int(info.get("size") or 0), _modified(info))
            for path, info in sorted(infos.items())
            if info.get("type", "file") == "file"
        ]

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


def _quiet_background_failures(fs: Any) -> None:
    """Keep the tracebacks of requests nobody awaits off the user's terminal.

    When a server goes away mid-transfer, aiohttp leaves tasks (a request body
    half sent) whose failure no one retrieves, and asyncio prints each one's
    traceback when it is collected. The request expman awaited fails too and
    reaches the user as one line, so these copies are noise; EXPMAN_DEBUG=1
    shows them.
    """
    loop = getattr(fs, "loop", None)  # an asynchronous file system's event loop thread
    if loop is not None and os.environ.get("EXPMAN_DEBUG") != "1":
        loop.set_exception_handler(lambda loop, context: None)


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


def _parallel(work: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """``work`` on each item, a few at a time (blocking fsspec calls from threads overlap)."""
    items = list(items)
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(len(items), _CONCURRENCY), "expman-store") as pool:
        return list(pool.map(work, items))


def _modified(info: Mapping[str, Any]) -> float | None:
    """When a listed file was last written, from whichever field the store reports."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        timestamp = getattr(value, "timestamp", None)
        if callable(timestamp):
            return float(timestamp())
    return None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
