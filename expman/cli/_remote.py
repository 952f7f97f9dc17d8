"""``expman remote add/list/remove``, ``expman push``, ``expman pull``."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Annotated, Any

import typer

from expman._errors import UsageError
from expman.cli._output import echo_json, note, table
from expman.experiments._workspace import Workspace
from expman.remote._progress import Progress

__all__ = ["TerminalProgress", "register"]

JSON_HELP = "Print a JSON summary (docs/cli.md)."
REMOTE_HELP = "The remote to use (default: the only one, or origin)."


def register(app: typer.Typer) -> None:
    remote_app = typer.Typer(
        help="Where push and pull send files: a directory or any fsspec URL (s3://, gs://, ...).",
        no_args_is_help=True,
    )
    remote_app.command(
        "add",
        epilog="Examples:  expman remote add origin s3://team-bucket/expman  |  "
        "expman remote add local /mnt/share/expman",
    )(add)
    remote_app.command("list")(list_remotes)
    remote_app.command("remove")(remove)
    remote_app.command(
        "gc", epilog="Examples:  expman remote gc  |  expman remote gc --delete --min-age 0"
    )(gc)
    app.add_typer(remote_app, name="remote")
    app.command("push", epilog="Examples:  expman push  |  expman push base wide --json")(push)
    app.command(
        "pull",
        epilog="Examples:  expman pull  |  expman pull base --checkpoints all  |  "
        "expman pull --checkpoints none --no-logs",
    )(pull)


class TerminalProgress(Progress):
    """A one-line bar on stderr (bytes, rate, ETA) when stderr is a terminal; else quiet."""

    def __init__(self) -> None:
        self.active = sys.stderr.isatty()
        self.label = ""
        self.total = 0
        self.done = 0
        self.started = 0.0
        self.drawn = 0.0

    def start(self, label: str, total_bytes: int) -> None:
        self.label, self.total, self.done = label, total_bytes, 0
        self.started = self.drawn = time.monotonic()
        self._draw()

    def advance(self, done_bytes: int) -> None:
        self.done += done_bytes
        now = time.monotonic()
        if now - self.drawn >= 0.1:
            self.drawn = now
            self._draw()

    def finish(self) -> None:
        if self.active:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()

    def git(self, line: str) -> None:
        if self.active and line.strip():
            sys.stderr.write(f"\r\x1b[Kgit: {line.strip()[:100]}")
            sys.stderr.flush()

    def _draw(self) -> None:
        if not self.active:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        percent = 100 * self.done / self.total if self.total else 100.0
        filled = int(percent / 5)
        bar = "#" * filled + "-" * (20 - filled)
        sys.stderr.write(
            f"\r\x1b[K{self.label} [{bar}] {_bytes(self.done)}/{_bytes(self.total)} "
            f"{_bytes(rate)}/s ETA {left:.0f}s"
        )
        sys.stderr.flush()


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def add(
    name: Annotated[str, typer.Argument(help="A name for the remote, e.g. origin.")],
    url: Annotated[str, typer.Argument(help="A directory, file://, s3://, gs://, ssh://, ...")],
    git_remote: Annotated[
        str, typer.Option("--git-remote", help="The git remote that takes the branches.")
    ] = "origin",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            metavar="KEY=VALUE",
            help="A storage option (e.g. endpoint_url=http://localhost:9000); never credentials.",
        ),
    ] = None,
) -> None:
    """Add a remote to expman.toml: [remote.NAME] url, git remote and storage options.

    Commit expman.toml so that every clone knows the remote. Credentials come
    from the environment or the storage library's configuration, never from here.
    """
    from expman.remote._config import add_remote

    options: dict[str, str] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {item!r} is not KEY=VALUE: e.g. endpoint_url=http://...")
        options[key.strip()] = value
    workspace = Workspace.open()
    remote = add_remote(workspace.root, name, url, git_remote=git_remote, options=options)
    note(f"remote {remote.name} -> {remote.url} (branches through git remote {remote.git_remote})")


def list_remotes(
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List the remotes of expman.toml."""
    from expman.remote._config import read_remotes

    remotes = read_remotes(Workspace.open().root)
    if as_json:
        echo_json([{**asdict(r), "options": dict(r.options)} for r in remotes])
        return
    rows = [[r.name, r.url, r.git_remote, _options(r.options)] for r in remotes]
    typer.echo(table(["remote", "url", "git remote", "options"], rows))


def _options(options: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "-"


def remove(name: Annotated[str, typer.Argument(help="The remote to remove.")]) -> None:
    """Remove a remote from expman.toml (nothing on the store is deleted)."""
    from expman.remote._config import remove_remote

    remote = remove_remote(Workspace.open().root, name)
    note(f"removed remote {remote.name} ({remote.url}); nothing on it was deleted")


def gc(
    remote: Annotated[str | None, typer.Option("--remote", help=REMOTE_HELP)] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete what is found (default: only list it).")
    ] = False,
    min_age: Annotated[
        float,
        typer.Option(
            "--min-age",
            metavar="HOURS",
            help="Leave objects younger than this (a push in progress uploads them first).",
        ),
    ] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Find objects on the store that nothing references; delete them with --delete.

    An object is kept while any manifest or any run record on an experiment
    branch (local or on the git remote, fetched first) names it. Manifests that
    a newer one of the same experiment covers entirely are removed too.
    """
    from expman.remote._config import choose_remote
    from expman.remote._gc import collect_garbage

    if min_age < 0:
        raise UsageError(f"--min-age {min_age}: give a number of hours, 0 or more")
    workspace = Workspace.open()
    chosen = choose_remote(workspace.root, remote)
    result = collect_garbage(
        workspace,
        chosen,
        delete=delete,
        min_age_seconds=min_age * 3600,
        progress=TerminalProgress(),
    )
    if as_json:
        echo_json(asdict(result))
        return
    found = (
        f"{len(result.unreferenced_objects)} unreferenced object(s) "
        f"({_bytes(result.unreferenced_bytes)}) and {len(result.redundant_manifests)} redundant "
        f"manifest(s) on {result.remote} ({result.url})"
    )
    if result.deleted:
        note(f"deleted {found}; {result.referenced_objects} referenced object(s) kept")
    else:
        note(f"would delete {found}: run expman remote gc --delete to delete them")
    if result.kept_recent:
        note(f"{result.kept_recent} unreferenced object(s) younger than {min_age:g} h left alone")


def push(
    names: Annotated[
        list[str] | None, typer.Argument(help="Experiments to push (default: all).")
    ] = None,
    remote: Annotated[str | None, typer.Option("--remote", help=REMOTE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Push experiments: files to the store, branches to the git remote, manifests last.

    Checkpoints named by the run records, event logs and run logs go to the
    store, content-addressed (a file already there is not sent again, so an
    interrupted push resumes). A branch that another machine moved on is
    refused: pull first.
    """
    from expman.remote._config import choose_remote
    from expman.remote._push import push_experiments

    workspace = Workspace.open()
    chosen = choose_remote(workspace.root, remote)
    result = push_experiments(workspace, chosen, names or [], progress=TerminalProgress())
    if as_json:
        echo_json(asdict(result))
        return
    note(
        f"pushed {len(result.experiments)} experiment(s) to {result.remote} ({result.url}): "
        f"{result.uploaded_files} file(s) uploaded ({_bytes(result.uploaded_bytes)}), "
        f"{result.already_stored} already there, {len(result.manifests_written)} manifest(s) "
        "written"
    )
    if result.behind:
        note(f"not pushed, the remote has more: {', '.join(result.behind)} (expman pull them)")


def pull(
    names: Annotated[
        list[str] | None, typer.Argument(help="Experiments to pull (default: all on the remote).")
    ] = None,
    remote: Annotated[str | None, typer.Option("--remote", help=REMOTE_HELP)] = None,
    checkpoints: Annotated[
        str,
        typer.Option(
            "--checkpoints",
            help="Which checkpoints to download: latest (to resume), all, or none (on demand).",
        ),
    ] = "latest",
    logs: Annotated[
        bool,
        typer.Option(
            "--logs/--no-logs",
            help="Download event files and run logs (--no-logs with --checkpoints none: "
            "branches only, the store is not contacted).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Pull experiments: branches from the git remote, logs and checkpoints from the store.

    Branches only move forward; one that ran on both machines is left as it is
    and reported. Every checkpoint is verified against its record's digest and
    checked as a restore checks a file before it is used; `expman run` fetches a
    missing latest one.
    """
    from expman._errors import RemoteIntegrityError
    from expman.remote._config import choose_remote
    from expman.remote._pull import pull_experiments

    if checkpoints not in ("latest", "all", "none"):
        raise UsageError(f"--checkpoints {checkpoints!r}: use latest, all or none")
    workspace = Workspace.open()
    chosen = choose_remote(workspace.root, remote)
    result = pull_experiments(
        workspace,
        chosen,
        names or [],
        checkpoints=checkpoints,  # type: ignore[arg-type]
        logs=logs,
        progress=TerminalProgress(),
    )
    if as_json:
        echo_json(asdict(result))
    else:
        counts: dict[str, int] = {}
        for update in result.branches.values():
            counts[update] = counts.get(update, 0) + 1
        summary = ", ".join(f"{n} {update}" for update, n in sorted(counts.items())) or "none"
        note(
            f"pulled {len(result.branches)} experiment(s) from {result.remote} ({summary}): "
            f"{result.downloaded_files} file(s) downloaded ({_bytes(result.downloaded_bytes)})"
        )
    if result.problems:
        raise RemoteIntegrityError(" ; ".join(result.problems))
