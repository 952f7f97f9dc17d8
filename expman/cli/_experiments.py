"""``expman init``, ``expman new`` and ``expman rm``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from expman._errors import UsageError
from expman.cli._output import note
from expman.experiments._workspace import Workspace, template_names

__all__ = ["register"]

SET_HELP = (
    "Set a parameter: KEY is a dotted path under [params] (model.hidden_units), "
    'VALUE is TOML ([20,20], 0.05, true, "text"; a bare word is a string). Repeatable.'
)


def register(app: typer.Typer) -> None:
    app.command(
        "init",
        epilog=(
            "Examples:  expman init  |  expman init --template iris iris-demo  |  "
            "expman init --command 'python train.py --fast'"
        ),
    )(init)
    app.command(
        "new",
        epilog=(
            "Examples:  expman new base  |  "
            "expman new wide --from base --set model.hidden_units=[20,20]"
        ),
    )(new)
    app.command(
        "rm", epilog="Examples:  expman rm wide  |  expman rm wide --keep-checkpoints --yes"
    )(rm)


def init(
    directory: Annotated[
        Path, typer.Argument(metavar="DIRECTORY", help="A directory inside a git repository.")
    ] = Path("."),
    command: Annotated[
        str | None,
        typer.Option(
            metavar="COMMAND", help="The command a run executes (default: python train.py)."
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help=f"Also copy a runnable example project: {', '.join(template_names())}. "
            "Never overwrites.",
        ),
    ] = None,
) -> None:
    """Create expman.toml at the repository root and ignore .expman/ (harmless twice).

    With --template, DIR may be a new directory: it becomes a git repository
    whose first commit is the template.
    """
    result = Workspace.init(directory, command=command, template=template)
    if result.repository_created:
        typer.echo(f"created git repository {result.root}")
    for name in result.template_files:
        typer.echo(f"added {name}")
    if not result.template_files:  # a template brings its own expman.toml, listed above
        config = result.root / "expman.toml"
        created = result.config_created
        typer.echo(f"created {config}" if created else f"{config} already exists; left as it is")
    if result.gitignore_updated:
        typer.echo(f"added /.expman/ to {result.root / '.gitignore'}")


def new(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The experiment's name: branch exp/NAME.")
    ],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help="Start from this experiment or git revision instead of the working tree."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=SET_HELP)
    ] = None,
    message: Annotated[
        str | None,
        typer.Option("-m", "--message", metavar="TEXT", help="Why: added to the commit message."),
    ] = None,
) -> None:
    """Create experiment NAME: branch exp/NAME with the exact code and parameters.

    Without --from, the working tree is recorded as it is, uncommitted and
    untracked (not ignored) files included. Your HEAD, index and files are not
    touched.
    """
    result = Workspace.open().new(name, base=from_, assignments=set_ or [], message=message)
    typer.echo(
        f"created experiment {result.name}: branch {result.branch} at {result.commit[:12]}, "
        f"from {result.source}"
    )
    for change in result.changes:
        key = f"params.{change.assignment.dotted}"
        if change.existed:
            typer.echo(f"  {key}: {change.old!r} -> {change.assignment.value!r}")
        else:
            typer.echo(f"  {key} = {change.assignment.value!r}")
            note(f"{key} did not exist in expman.toml; it was added")
    for path, size in result.large_files:
        note(
            f"warning: {path} ({size / 1e6:.1f} MB, untracked) was stored in {result.branch}: "
            f"if it is data, not code, add it to .gitignore, then expman rm {result.name} "
            f"--yes && expman new {result.name}"
        )
    if result.archived_checkpoints:
        note(
            f"checkpoints left in .expman/checkpoints/{result.name} by a removed experiment "
            f"of that name moved to {result.archived_checkpoints}: the new one starts from "
            "scratch"
        )


def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The experiment to delete.")],
    keep_checkpoints: Annotated[
        bool, typer.Option("--keep-checkpoints", help="Keep .expman/checkpoints/NAME.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete experiment NAME: its branch, worktree, run logs and checkpoints."""
    workspace = Workspace.open()
    head = workspace.head_of(name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"expman rm {name} deletes the branch and its checkpoints: add --yes")
        what = "branch" if keep_checkpoints else "branch and checkpoints"
        typer.confirm(f"delete experiment {name} ({what}, at {head[:12]})?", abort=True)
    result = workspace.remove(name, keep_checkpoints=keep_checkpoints)
    typer.echo(
        f"deleted experiment {name} (branch {result.branch} was {result.commit[:12]}; "
        f"git branch {result.branch} {result.commit[:12]} brings it back)"
    )
