"""``expman sweep``: many experiments from one base, queued."""

from __future__ import annotations

from typing import Annotated

import typer

from expman.cli._output import note

__all__ = ["register"]

SWEEP_SET_HELP = (
    "KEY=V1,V2,...: a comma list of TOML values (brackets nest: [10,10],[20,20]), or a "
    "distribution: loguniform(A,B), uniform(A,B), randint(A,B), choice(V1,V2,...). "
    "Repeatable: the grid is every combination."
)


def register(app: typer.Typer) -> None:
    app.command(
        "sweep",
        epilog=(
            "Examples:  expman sweep lr-grid --from base --set lr=0.1,0.03,0.01  |  "
            "expman sweep lr-rand --from base --set 'lr=loguniform(1e-4,1e-1)' "
            "--samples 20 --seed 0"
        ),
    )(sweep)


def sweep(
    name: Annotated[str, typer.Argument(help="The sweep: members are NAME-1, NAME-2, ...")],
    set_: Annotated[list[str], typer.Option("--set", help=SWEEP_SET_HELP)],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help="Start from this experiment or git revision instead of the working tree."
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(help="Draw this many random combinations instead of the whole grid."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the random draws (default: a random one, recorded).")
    ] = None,
    queue: Annotated[
        bool, typer.Option("--queue/--no-queue", help="Queue the members (expman queue start).")
    ] = True,
) -> None:
    """Create a sweep: one experiment (branch) per combination of values, each queued.

    Every member is an ordinary experiment with its values in its expman.toml
    and a Sweep: trailer; the sweep is recorded at refs/expman/sweeps/NAME.
    """
    from expman.experiments._sweep import create_sweep
    from expman.experiments._workspace import Workspace

    workspace = Workspace.open()
    record = create_sweep(workspace, name, base=from_, assignments=set_, samples=samples, seed=seed)
    seeded = f", seed {record.seed}" if record.seed is not None else ""
    typer.echo(
        f"created sweep {record.name}: {len(record.members)} experiments from "
        f"{record.source}{seeded}"
    )
    for member in record.members:
        values = ", ".join(f"{k}={_show(v)}" for k, v in member.params.items())
        typer.echo(f"  {member.name}  {values}")
    if queue:
        from expman.queue._queue import enqueue

        enqueue(
            workspace,
            [m.name for m in record.members],
            params={m.name: m.params for m in record.members},
        )
        note(f"queued {len(record.members)}: run them with expman queue start -j N")


def _show(value: object) -> str:
    import json

    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value, separators=(",", ":"))
