"""The git repository: the only module that runs git.

expman drives git's plumbing commands (``write-tree``, ``commit-tree``,
``update-ref``, ``for-each-ref``, ``worktree``) through the ``git`` program
rather than GitPython: importing GitPython alone takes ~110 ms, most of the
0.15 s that ``expman run`` may add to a command (see docs/decisions.md).

Nothing here touches the user's HEAD, index or working tree: snapshots are
built in a temporary index file (``GIT_INDEX_FILE``) seeded from the real one,
records are added to a tree with ``mktree`` (no index at all), and refs move by
compare-and-swap ``update-ref``. Inside ``GitRepo.reading()``, every read
(revisions, files, commit messages, trees) goes through one long-lived ``git
cat-file --batch`` process instead of one process per read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from expman._errors import ExperimentExistsError, RepositoryError, WriteError

__all__ = ["EMPTY_TREE", "GitError", "GitRepo", "RefUpdateError"]

ZERO = "0" * 40
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_FIELD = "\x1f"
_RECORD = "\x1e"


class GitError(RepositoryError):
    """A git command failed."""


class RefUpdateError(RepositoryError):
    """A ref moved meanwhile (the compare-and-swap failed)."""


@dataclass(frozen=True)
class RefInfo:
    ref: str
    commit: str
    subject: str
    trailers: Mapping[str, str]


def _run_git(
    args: Sequence[str],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [_git_program(), *args],
        cwd=cwd,
        env=_environment(env),
        input=input,
        capture_output=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise _failure(args, cwd, result)
    return result


def _git_program() -> str:
    git = shutil.which("git")
    if git is None:
        raise RepositoryError("git is not installed or not on PATH: install git and retry")
    return git


def _environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(extra or {})}


class _Conversation:
    """A git process kept open for many requests (``cat-file --batch``, ``mktree --batch``)."""

    def __init__(self, args: Sequence[str], cwd: Path) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [_git_program(), *args],
            cwd=cwd,
            env=_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl-C in the terminal (SIGINT to the foreground process
            # group) reaches expman and the command it supervises, never a git that expman
            # still has to talk to. It ends when expman closes its input, or dies.
            start_new_session=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout

    def ask(self, request: bytes) -> bytes:
        """Send ``request``; return the first line of the answer (without its newline)."""
        try:
            self.stdin.write(request)
            self.stdin.flush()
        except BrokenPipeError:
            pass  # git stopped: the empty answer below says so
        line = self.stdout.readline()
        if not line.endswith(b"\n"):
            self.close()
            message = self.process.stderr.read() if self.process.stderr else b""
            lines = message.decode(errors="replace").strip().splitlines()
            raise GitError(f"git {self.args[0]} failed: {lines[-1] if lines else 'no answer'}")
        return line[:-1]

    def read(self, size: int) -> bytes:
        return self.stdout.read(size)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stdout.close()
        if self.process.stderr:
            self.process.stderr.close()


class ObjectReader:
    """Objects read through one ``git cat-file --batch`` process, however many.

    Names are anything git's revision syntax takes (``exp/a^{commit}``,
    ``COMMIT:path/to/file``); a name that names nothing reads as None.
    """

    def __init__(self, root: Path) -> None:
        self._git = _Conversation(["cat-file", "--batch"], root)

    def read(self, name: str) -> tuple[str, str, bytes] | None:
        """(object id, type, content) of ``name``, or None if there is no such object."""
        if "\n" in name or "\0" in name:
            return None  # no object has such a name, and the request would break the protocol
        header = self._git.ask(f"{name}\n".encode()).split()
        if header[-1] in (b"missing", b"ambiguous") or len(header) != 3:
            return None
        oid, kind, size = header
        content = self._git.read(int(size) + 1)[:-1]
        return oid.decode(), kind.decode(), content

    def alive(self) -> bool:
        return self._git.alive()

    def close(self) -> None:
        self._git.close()


_LOCK_FILE = re.compile(r"Unable to create '(.+?\.lock)': File exists")


def _failure(
    args: Sequence[str], cwd: Path, result: subprocess.CompletedProcess[bytes]
) -> RepositoryError | WriteError:
    """The error a failed git command means for the user: a stale lock, a full disk, ..."""
    text = result.stderr.decode(errors="replace")
    words = list(args)
    while words[:1] == ["-C"]:
        words = words[2:]
    verb = words[0] if words else "git"
    lock = _LOCK_FILE.search(text)
    if lock:
        return GitError(f"git {verb} failed: {lock_message(Path(lock.group(1)))}")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return WriteError(
            f"git cannot write to the repository at {cwd}: no space left on the device: "
            "free some space and retry (nothing was changed)"
        )
    lines = text.strip().splitlines()
    return GitError(f"git {verb} failed: {lines[-1] if lines else 'no message'}")


def lock_message(path: Path) -> str:
    return (
        f"{path} exists: another git process is running here, or one was killed; if none "
        "is running, remove that file and retry"
    )


class GitRepo:
    """A git repository, found from a directory inside it."""

    def __init__(self, root: Path, git_dir: Path) -> None:
        self.root = root
        self.git_dir = git_dir
        self._reader: ObjectReader | None = None

    @contextmanager
    def reading(self) -> Iterator[ObjectReader]:
        """One ``cat-file --batch`` process answers every read inside the block.

        Inside an open block, the open reader answers; if it died meanwhile (killed
        while a long command ran), a new one replaces it, closed by the outer block.
        """
        if self._reader is not None:
            if not self._reader.alive():
                self._reader.close()
                self._reader = ObjectReader(self.root)
            yield self._reader
            return
        self._reader = ObjectReader(self.root)
        try:
            yield self._reader
        finally:
            reader, self._reader = self._reader, None
            reader.close()

    @classmethod
    def discover(cls, path: Path) -> GitRepo:
        if not path.is_dir():
            raise RepositoryError(f"{path} is not a directory")
        result = _run_git(["rev-parse", "--show-toplevel", "--absolute-git-dir"], path, check=False)
        if result.returncode != 0:
            raise RepositoryError(
                f"{path} is not inside a git repository: run `git init` there first"
            )
        top, git_dir = result.stdout.decode().splitlines()[:2]
        return cls(Path(top), Path(git_dir))

    @classmethod
    def create(cls, path: Path) -> GitRepo:
        """``git init`` a new repository at ``path`` (created if needed)."""
        path.mkdir(parents=True, exist_ok=True)
        _run_git(["init", "--quiet"], path)
        return cls.discover(path)

    def commit_everything(self, message: str) -> str:
        """Commit the whole working tree; only for a repository expman just created."""
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", message)
        return self.head_commit()

    def git(
        self, *args: str, env: Mapping[str, str] | None = None, input: bytes | None = None
    ) -> str:
        return _run_git(args, self.root, env=env, input=input).stdout.decode()

    # -- state of the repository ------------------------------------------------

    def resolve(self, revision: str) -> str | None:
        """The commit a revision names, or None."""
        if "\0" in revision:
            return None  # git cannot be given it, and no revision has one
        if self._reader is not None:
            found = self._reader.read(f"{revision}^{{commit}}")
            return found[0] if found is not None else None
        result = _run_git(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"],
            self.root,
            check=False,
        )
        return result.stdout.decode().strip() if result.returncode == 0 else None

    def head_commit(self) -> str:
        commit = self.resolve("HEAD")
        if commit is None:
            raise RepositoryError(
                f"the repository at {self.root} has no commits yet: commit something first "
                "(git add -A && git commit -m 'first commit')"
            )
        return commit

    def head_branch(self) -> str | None:
        result = _run_git(["symbolic-ref", "--quiet", "--short", "HEAD"], self.root, check=False)
        return result.stdout.decode().strip() if result.returncode == 0 else None

    def check_identity(self) -> None:
        # `git var` accepts identities that commit-tree refuses (user@host.(none)),
        # so ask commit-tree itself, with the empty tree: nothing is referenced.
        result = _run_git(
            ["commit-tree", EMPTY_TREE], self.root, input=b"identity check", check=False
        )
        if result.returncode != 0:
            if "ident" not in result.stderr.decode(errors="replace"):
                raise _failure(["commit-tree"], self.root, result)  # a full disk, ...
            raise RepositoryError(
                "git does not know who you are, and expman commits as you: run "
                "git config user.name 'Your Name' && git config user.email you@example.com"
            )

    def untracked_files(self) -> list[str]:
        """Files git does not track and does not ignore, relative to the root."""
        output = self.git("ls-files", "--others", "--exclude-standard", "-z")
        return [path for path in output.split("\0") if path]

    def read_file(self, revision: str, path: str) -> bytes | None:
        if self._reader is not None:
            found = self._reader.read(f"{revision}:{path}")
            return found[2] if found is not None and found[1] == "blob" else None
        result = _run_git(["cat-file", "blob", f"{revision}:{path}"], self.root, check=False)
        return result.stdout if result.returncode == 0 else None

    def read_files(self, revision: str, paths: Sequence[str]) -> dict[str, bytes | None]:
        """Several files of one revision with a single git process."""
        contents = self.read_objects([f"{revision}:{path}" for path in paths])
        return dict(zip(paths, contents, strict=True))

    def read_objects(self, names: Sequence[str]) -> list[bytes | None]:
        """Several objects (``REV:PATH``) with a single git process; None where missing."""
        if not names:
            return []
        if self._reader is not None:
            objects = [self._reader.read(name) for name in names]
            return [found[2] if found is not None else None for found in objects]
        request = "".join(f"{name}\n" for name in names).encode()
        output = _run_git(["cat-file", "--batch"], self.root, input=request).stdout
        found: list[bytes | None] = []
        position = 0
        for _ in names:
            end = output.index(b"\n", position)
            header = output[position:end].split()
            if header[-1] in (b"missing", b"ambiguous"):
                found.append(None)
                position = end + 1
                continue
            size = int(header[2])
            found.append(output[end + 1 : end + 1 + size])
            position = end + 1 + size + 1
        return found

    def list_tree(self, revision: str, directory: str) -> list[str]:
        result = _run_git(
            ["ls-tree", "--name-only", f"{revision}:{directory}"], self.root, check=False
        )
        return result.stdout.decode().split("\n")[:-1] if result.returncode == 0 else []

    def refs(self, prefix: str) -> list[RefInfo]:
        """Every ref under ``prefix`` with its commit's subject and trailers."""
        fields = ["%(refname)", "%(objectname)", "%(contents:subject)", "%(trailers:unfold)"]
        output = self.git("for-each-ref", f"--format={_FIELD.join(fields)}{_RECORD}", prefix)
        infos = []
        for record in output.split(_RECORD)[:-1]:
            ref, commit, subject, trailers = record.lstrip("\n").split(_FIELD)
            infos.append(RefInfo(ref, commit, subject, parse_trailers(trailers)))
        return infos

    def log(self, revision: str, *, limit: int | None = None) -> list[RefInfo]:
        """Commits reachable from ``revision``, newest first, with their trailers."""
        args = ["log", f"--format=%H{_FIELD}%s{_FIELD}%(trailers:unfold){_RECORD}"]
        if limit:
            args.append(f"--max-count={limit}")
        output = self.git(*args, revision, "--")
        infos = []
        for record in output.split(_RECORD)[:-1]:
            commit, subject, trailers = record.lstrip("\n").split(_FIELD)
            infos.append(RefInfo(revision, commit, subject, parse_trailers(trailers)))
        return infos

    # -- writing objects and refs -----------------------------------------------

    @contextmanager
    def temporary_index(self) -> Iterator[dict[str, str]]:
        """An index file of our own, a copy of the real one: the user's stays untouched."""
        with tempfile.TemporaryDirectory(prefix="expman-index-") as scratch:
            index = Path(scratch) / "index"
            real = self.git_dir / "index"
            if real.exists():
                shutil.copyfile(real, index)
            yield {"GIT_INDEX_FILE": str(index)}

    def snapshot_worktree(self, files: Mapping[str, bytes], exclude: Sequence[str]) -> str:
        """The working tree as it is (untracked, not ignored files too), plus ``files``."""
        with self.temporary_index() as env:
            self.git("add", "-A", env=env)
            if exclude:  # expman's own state, even where .gitignore does not list it
                self.git("rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *exclude, env=env)
            return self._write_tree(env, files)

    def tree_with(self, commit: str, files: Mapping[str, bytes]) -> str:
        """The tree of ``commit`` (a commit or a tree) with ``files`` added or replaced.

        Three git processes whatever the depth (fewer with a reader open): the
        blobs in one, the trees read through ``cat-file --batch`` and written,
        innermost first, by one ``mktree --batch``. No index is involved.
        """
        if not files:
            return self.tree_of(commit)
        blobs = dict(zip(files, self._write_blobs(list(files.values())), strict=True))
        with self.reading() as reader:
            writer = _Conversation(["mktree", "-z", "--batch"], self.root)
            try:
                return _build_tree(reader, writer, f"{commit}^{{tree}}", blobs)
            finally:
                writer.close()

    def _write_tree(self, env: dict[str, str], files: Mapping[str, bytes]) -> str:
        if files:
            blobs = self._write_blobs(list(files.values()))
            entries = "".join(
                f"100644 {blob}\t{path}\n" for path, blob in zip(files, blobs, strict=True)
            )
            self.git("update-index", "--index-info", env=env, input=entries.encode())
        return self.git("write-tree", env=env).strip()

    def _write_blobs(self, contents: Sequence[bytes]) -> list[str]:
        """Store several blobs with one git process."""
        with tempfile.TemporaryDirectory(prefix="expman-blobs-") as scratch:
            paths = []
            for number, content in enumerate(contents):
                path = Path(scratch) / str(number)
                path.write_bytes(content)
                paths.append(str(path))
            return self.git("hash-object", "-w", "--", *paths).split()

    def trees_with_root_files(
        self, tree: str, variants: Sequence[Mapping[str, bytes]]
    ) -> list[str]:
        """One tree per variant: ``tree`` with top-level files replaced, in two git processes."""
        entries: dict[str, str] = {}
        for line in self.git("ls-tree", "-z", tree).split("\0")[:-1]:
            entries[line.split("\t", 1)[1]] = line
        contents = [content for files in variants for content in files.values()]
        blobs = iter(self._write_blobs(contents))
        batch = []
        for files in variants:
            own = dict(entries)
            for path in files:
                own[path] = f"100644 blob {next(blobs)}\t{path}"
            batch.append("".join(f"{entry}\n" for entry in own.values()))
        trees = self.git("mktree", "--batch", input="\n".join(batch).encode()).split()
        return trees[: len(variants)]

    def commit_trailers(self, commit: str) -> dict[str, str] | None:
        """The trailers of ``commit`` read through the open reader, or None.

        None also when no reader is open or the message is not plainly
        ``Key: value`` lines in its last paragraph, as expman writes them: then
        ask ``git log`` (``%(trailers)``), whose rules are git's own.
        """
        if self._reader is None:
            return None
        found = self._reader.read(f"{commit}^{{commit}}")
        if found is None:
            return None
        _, _, message = found[2].partition(b"\n\n")
        return _plain_trailers(message.decode("utf-8", errors="replace"))

    def tree_of(self, commit: str) -> str:
        return self.git("rev-parse", f"{commit}^{{tree}}").strip()

    def commit_tree(self, tree: str, parents: Sequence[str], message: str) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self.git(*args, input=message.encode()).strip()

    def create_ref(self, ref: str, commit: str, *, what: str) -> None:
        """Create ``ref``; refuse if it exists (the compare-and-swap is with "absent")."""
        result = _run_git(["update-ref", ref, commit, ZERO], self.root, check=False)
        if result.returncode != 0:
            if b"reference already exists" not in result.stderr:
                raise _failure(["update-ref"], self.root, result)
            raise ExperimentExistsError(f"{what} already exists ({ref})")

    def create_refs(self, refs: Mapping[str, str], *, what: str) -> None:
        """Create every ref in one transaction: all of them, or none if any exists."""
        lines = ["start", *(f"create {ref} {commit}" for ref, commit in refs.items()), "commit"]
        request = "".join(f"{line}\n" for line in lines).encode()
        result = _run_git(["update-ref", "--stdin"], self.root, input=request, check=False)
        if result.returncode != 0:
            raise ExperimentExistsError(f"{what}: one of the refs already exists, none was created")

    def move_ref(self, ref: str, new: str, old: str) -> None:
        result = _run_git(["update-ref", ref, new, old], self.root, check=False)
        if result.returncode != 0:
            raise RefUpdateError(
                f"{ref} moved while expman was updating it (another expman or git?): retry"
            )

    def delete_ref(self, ref: str, old: str) -> None:
        result = _run_git(["update-ref", "-d", ref, old], self.root, check=False)
        if result.returncode != 0:
            raise RefUpdateError(f"{ref} moved while expman was deleting it: retry")

    # -- worktrees ----------------------------------------------------------------

    def check_ref_unlocked(self, ref: str) -> None:
        """Refuse now, not after a run, if a git lock file would stop ``ref`` from moving."""
        common = self.git_dir
        with contextlib.suppress(OSError):
            common = (self.git_dir / (self.git_dir / "commondir").read_text().strip()).resolve()
        for lock in (common / f"{ref}.lock", common / "packed-refs.lock"):
            if lock.exists():
                raise RepositoryError(f"cannot record runs on {ref}: {lock_message(lock)}")

    def checkout_detached(self, path: Path, commit: str) -> None:
        """A worktree at ``path`` with ``commit`` checked out (detached), created if needed.

        The worktree is expman's own and the caller holds the experiment's lock,
        so a lock file in the worktree's git directory (``index.lock``,
        ``HEAD.lock``) was left by a git process that was killed: it is removed.
        """
        if (path / ".git").exists():
            _remove_stale_locks(path)
            worktree = ["-C", str(path)]
            self.git(*worktree, "checkout", "--quiet", "--force", "--detach", commit)
            self.git(*worktree, "clean", "--quiet", "-d", "--force")
        else:
            self.git("worktree", "prune")
            self.git("worktree", "add", "--quiet", "--force", "--detach", str(path), commit)

    def remove_worktree(self, path: Path) -> None:
        if (path / ".git").exists():
            self.git("worktree", "remove", "--force", str(path))
        self.git("worktree", "prune")

    def diff_stat(self, a: str, b: str) -> str:
        return self.git("diff", "--stat", a, b, "--")


def _remove_stale_locks(worktree: Path) -> None:
    try:
        pointer = (worktree / ".git").read_text(encoding="utf-8").strip()
    except OSError:
        return
    if not pointer.startswith("gitdir: "):
        return
    private = worktree / pointer.removeprefix("gitdir: ")
    for name in ("index.lock", "HEAD.lock"):
        (private / name).unlink(missing_ok=True)


_TRAILER = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*): (.*)")


def _plain_trailers(message: str) -> dict[str, str] | None:
    """The trailers of a message whose last paragraph is only ``Key: value`` lines, else None."""
    lines = message.rstrip().split("\n")
    if any(line.startswith(("---", "#")) for line in lines):
        return None  # where git's rules (a patch divider, comments) could differ
    paragraphs = "\n".join(lines).split("\n\n")
    if len(paragraphs) < 2:
        return None
    trailers = {}
    for line in paragraphs[-1].split("\n"):
        match = _TRAILER.fullmatch(line)
        if match is None:
            return None
        trailers[match.group(1)] = match.group(2).strip()
    return trailers


def _tree_entries(oid: str, content: bytes) -> dict[bytes, tuple[bytes, str]]:
    """A tree object's entries: name -> (mode, object id)."""
    width = len(oid) // 2  # 20 bytes (sha1) or 32 (sha256)
    entries = {}
    position = 0
    while position < len(content):
        space = content.index(b" ", position)
        nul = content.index(b"\0", space)
        mode, name = content[position:space], content[space + 1 : nul]
        entries[name] = (mode, content[nul + 1 : nul + 1 + width].hex())
        position = nul + 1 + width
    return entries


def _build_tree(
    reader: ObjectReader, writer: _Conversation, source: str | None, blobs: Mapping[str, str]
) -> str:
    """Write the tree ``source`` names (None: an empty one) with ``blobs`` (path -> id) in it."""
    found = reader.read(source) if source is not None else None
    entries = _tree_entries(found[0], found[2]) if found and found[1] == "tree" else {}
    subdirectories: dict[str, dict[str, str]] = {}
    for path, blob in blobs.items():
        head, slash, rest = path.partition("/")
        if slash:
            subdirectories.setdefault(head, {})[rest] = blob
        else:
            entries[head.encode()] = (b"100644", blob)
    for name, inner in subdirectories.items():
        existing = entries.get(name.encode())
        inside = existing[1] if existing is not None and existing[0] == b"40000" else None
        entries[name.encode()] = (b"40000", _build_tree(reader, writer, inside, inner))
    request = b"".join(
        b"%s %s %s\t%s\0" % (mode, _KINDS.get(mode, b"blob"), oid.encode(), name)
        for name, (mode, oid) in entries.items()
    )
    return writer.ask(request + b"\0").decode()


_KINDS = {b"40000": b"tree", b"160000": b"commit"}


def parse_trailers(text: str) -> dict[str, str]:
    trailers = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            trailers[key.strip()] = value.strip()
    return trailers
