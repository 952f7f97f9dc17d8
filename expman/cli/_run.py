"""``expman run``."""

from __future__ import annotations

from typing import Annotated

import typer

from expman._errors import CheckpointNotFoundError, UsageError
from expman.cli._experiments import SET_HELP
from expman.cli._output import note
from expman.experiments._runner import KeptCheckpoint, RunOptions, run_experiment
from expman.experiments._workspace import Workspace

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        epilog=(
            "Examples:  expman run base  |  expman run wide --from-checkpoint base  |  "
            "expman run base --set lr=0.05  |  expman run base -- python train.py --epochs 3"
        ),
    )(run)


def run(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The experiment to run.")],
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[-- COMMAND...]",
            help="The command to run instead of [run] command (after --).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help=SET_HELP + " Committed on the branch before the run."
        ),
    ] = None,
    from_checkpoint: Annotated[
        str | None,
        typer.Option(
            "--from-checkpoint",
            metavar="EXPERIMENT[@STEP]",
            help="Warm-start from another experiment's checkpoint (architecture-checked).",
        ),
    ] = None,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Allow a partial restore; what is skipped is reported."),
    ] = False,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Start over: earlier checkpoints move to .expman/archive/."),
    ] = False,
    queue: Annotated[
        bool,
        typer.Option("--queue", help="Queue the run instead (expman queue start runs it)."),
    ] = False,
) -> None:
    """Run experiment NAME in a worktree of its branch and record the run on it.

    The run resumes from the experiment's latest checkpoint. Its output goes to
    the terminal and to .expman/runs/NAME/NNN/output.log. The exit code is the
    command's (3 if a restore was refused for a different architecture; 130,
    143, 129 when expman got SIGINT, SIGTERM, SIGHUP, passed on to the command).
    """
    workspace = Workspace.open()
    if queue:
        _queue_run(workspace, name, bool(command or set_ or from_checkpoint or partial or fresh))
        return
    result = run_experiment(
        workspace,
        name,
        RunOptions(
            assignments=set_ or [],
            from_checkpoint=from_checkpoint,
            partial=partial,
            fresh=fresh,
            command=command or [],
        ),
        fetch_checkpoint=lambda latest: _fetch_pulled_checkpoint(workspace, latest),
    )
    for change in result.changes:
        note(f"params {change}")
    if result.archived_checkpoints:
        note(f"earlier checkpoints moved to {result.archived_checkpoints}")
    if result.refusal:
        note(result.refusal)
    branch = workspace.ref(name).branch
    note(f"{result.subject}; recorded as {result.record_commit[:12]} on {branch}")
    raise typer.Exit(result.exit_code)


def _queue_run(workspace: Workspace, name: str, with_options: bool) -> None:
    """``expman run NAME --queue``: the queue runs plain ``expman run NAME``."""
    from expman.queue._queue import enqueue

    if with_options:
        raise UsageError(
            f"--queue runs plain expman run {name}: set parameters first "
            f"(expman new or expman run --set), then queue it"
        )
    entry = enqueue(workspace, [name])[0]
    note(f"queued {name} (try {entry.attempt}): expman queue start runs it")


def _fetch_pulled_checkpoint(workspace: Workspace, latest: KeptCheckpoint) -> None:
    """The last record names a checkpoint not here: a pulled experiment (issue 13)."""
    name = latest.experiment
    from expman.cli._remote import TerminalProgress
    from expman.remote._prepare import fetch_latest_checkpoint_for_run

    try:  # the remote extra (fsspec) is imported only when a checkpoint must be fetched
        step = fetch_latest_checkpoint_for_run(workspace, name, progress=TerminalProgress())
    except ImportError as error:
        raise CheckpointNotFoundError(
            f"the latest checkpoint of {name} ({latest.file}, step {latest.step}) is not on "
            "this machine, and fetching it needs the remote extra: pip install "
            f"'expman[remote]', or start over with expman run {name} --fresh"
        ) from error
    if step is not None:
        note(f"fetched the latest checkpoint of {name} (step {step}) from the remote, verified")
