"""``expman queue``: what is queued, running and done; start, cancel, retry, logs."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

import typer

from expman._errors import UsageError
from expman.cli._output import echo_json, table

__all__ = ["register"]

queue_app = typer.Typer(
    name="queue",
    help="The run queue: see it (no command), start it, cancel, retry, read logs.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app)


@queue_app.callback()
def status(
    context: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (docs/sweeps.md).")] = False,
) -> None:
    """Show the queue: state, experiment, params, worker, duration (expman queue)."""
    if context.invoked_subcommand is not None:
        return
    from expman.experiments._workspace import Workspace
    from expman.queue._queue import entries

    found = entries(Workspace.open())
    if as_json:
        echo_json([{**asdict(e), "duration": e.duration} for e in found])
        return
    if not found:
        typer.echo("the queue is empty: expman sweep NAME --set ... or expman run NAME --queue")
        return
    rows = [
        [
            e.name,
            e.state,
            ", ".join(f"{k}={v}" for k, v in e.params.items()) or "-",
            e.worker or "-",
            _duration(e.duration),
            str(e.attempt),
            e.error or (f"run {e.run}" if e.run else "-"),
        ]
        for e in found
    ]
    typer.echo(table(["EXPERIMENT", "STATE", "PARAMS", "WORKER", "TIME", "TRY", "NOTE"], rows))


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _resources(text: str | None) -> dict[str, float]:
    found: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        try:
            found[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise UsageError(f"invalid --resources {text!r}: expected NAME=AMOUNT, e.g. GPU=1")
    return found


@queue_app.command(
    "start",
    epilog=(
        "Examples:  expman queue start -j 2  |  expman queue start --scheduler tcp://head:8786"
        "  |  expman queue start --resources GPU=1"
    ),
)
def start(
    jobs: Annotated[
        int, typer.Option("-j", "--jobs", help="Runs at a time on the local cluster.")
    ] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option(help="An existing Dask scheduler (tcp://HOST:8786) instead of a local one."),
    ] = None,
    resources: Annotated[
        str | None,
        typer.Option(help="What each run needs of a worker's resources, e.g. GPU=1."),
    ] = None,
) -> None:
    """Run the queue until it is idle: a local Dask cluster, or an existing one.

    Ctrl-C interrupts the running experiments (recorded as interrupted) and
    leaves the rest queued; a later queue start continues.
    """
    from expman.experiments._workspace import Workspace
    from expman.queue._dask import QueueOptions, start_queue

    started = time.monotonic()

    def report(entry: object) -> None:
        from expman.queue._store import Entry

        assert isinstance(entry, Entry)
        where = f" on {entry.worker}" if entry.worker else ""
        what = f"run {entry.run}" if entry.run else (entry.error or "")
        typer.echo(f"{entry.name}: {entry.state} in {_duration(entry.duration)}{where} ({what})")

    result = start_queue(
        Workspace.open(),
        QueueOptions(jobs=jobs, scheduler=scheduler, resources=_resources(resources)),
        report=report,
    )
    counts: dict[str, int] = {}
    for entry in result.finished:
        counts[entry.state] = counts.get(entry.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "nothing to run"
    typer.echo(f"queue idle after {time.monotonic() - started:.1f}s: {summary}")
    if result.interrupted:
        raise typer.Exit(130)
    if any(e.state != "done" for e in result.finished):
        raise typer.Exit(1)


@queue_app.command("cancel")
def cancel(name: Annotated[str, typer.Argument(help="A queued or running experiment.")]) -> None:
    """Take a queued experiment off the queue, or interrupt it if it runs here."""
    from expman.experiments._workspace import Workspace
    from expman.queue._queue import cancel as cancel_entry

    entry = cancel_entry(Workspace.open(), name)
    if entry.state == "cancelled":
        typer.echo(f"cancelled {name} (expman queue retry {name} queues it again)")
    else:
        typer.echo(f"interrupting {name} (pid {entry.pid}); it is recorded as interrupted")


@queue_app.command("retry")
def retry(
    name: Annotated[str, typer.Argument(help="An experiment that ended in the queue.")],
) -> None:
    """Queue again an experiment that failed, was lost, interrupted, cancelled or done."""
    from expman.experiments._workspace import Workspace
    from expman.queue._queue import retry as retry_entry

    entry = retry_entry(Workspace.open(), name)
    typer.echo(f"queued {name} again (try {entry.attempt})")


@queue_app.command("logs")
def logs(name: Annotated[str, typer.Argument(help="An experiment in the queue.")]) -> None:
    """Print the output of the experiment's latest try in the queue."""
    import sys

    from expman.experiments._workspace import Workspace
    from expman.queue._queue import log_path

    sys.stdout.buffer.write(log_path(Workspace.open(), name).read_bytes())
