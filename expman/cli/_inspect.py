"""``expman list``, ``expman show`` and ``expman log``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer

from expman.cli._output import echo_json, format_number, table
from expman.experiments._workspace import ExperimentSummary, Workspace

__all__ = ["register"]

JSON_HELP = "Print JSON (schema in docs/cli.md)."


def register(app: typer.Typer) -> None:
    app.command("list", epilog="Examples:  expman list  |  expman list --json")(list_)
    app.command("show", epilog="Examples:  expman show wide  |  expman show wide --json")(show)
    app.command("log", epilog="Examples:  expman log wide")(log)


def _metric(workspace: Workspace, summary: ExperimentSummary) -> str:
    key = workspace.config.key_metric
    if key:
        return format_number(summary.metrics.get(key))
    return ", ".join(f"{k} {format_number(v)}" for k, v in summary.metrics.items()) or "-"


def list_(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """List every experiment: base, runs, latest step, status and metrics."""
    workspace = Workspace.open()
    summaries = workspace.experiments()
    if as_json:
        echo_json([asdict(s) for s in summaries])
        return
    if not summaries:
        typer.echo("no experiments yet: create one with expman new NAME")
        return
    header = ["NAME", "BASE", "RUNS", "STEP", "STATUS", workspace.config.key_metric or "METRICS"]
    rows = [
        [
            s.name,
            s.base or "-",
            str(s.runs),
            format_number(s.last_step),
            s.status,
            _metric(workspace, s),
        ]
        for s in summaries
    ]
    typer.echo(table(header, rows))


def _details(workspace: Workspace, name: str) -> dict[str, Any]:
    from expman.checkpoints._catalog import CheckpointDirectory

    summary = workspace.summary(name)
    directory = workspace.checkpoint_dir(name)
    checkpoints = []
    if directory.is_dir():
        for info in CheckpointDirectory(directory).infos():
            checkpoints.append(
                {
                    "step": info.step,
                    "file": str(info.path),
                    "size": info.size,
                    "wall_time": info.wall_time,
                    "metrics": dict(info.metrics),
                    "pinned": info.pinned,
                    "error": info.error,
                }
            )
    return {
        **asdict(summary),
        "params": workspace.params(name),
        "checkpoint_dir": str(directory),
        "checkpoints": checkpoints,
        "run_history": [asdict(r) for r in workspace.runs(name)],
    }


def show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The experiment.")],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show one experiment: branch, parameters, runs and checkpoints."""
    details = _details(Workspace.open(), name)
    if as_json:
        echo_json(details)
        return
    lines = [
        f"experiment {details['name']} (branch {details['branch']} at {details['commit'][:12]})",
        f"  base:        {details['base'] or '-'}",
        f"  status:      {details['status']}, {details['runs']} run(s), "
        f"latest step {format_number(details['last_step'])}",
        f"  metrics:     {_metrics(details['metrics'])}",
        f"  checkpoints: {details['checkpoint_dir']}",
    ]
    lines += [
        f"    step {c['step']:>6}  {c['size']:>10} bytes  {_metrics(c['metrics'])}"
        + ("  pinned" if c["pinned"] else "")
        + (f"  DAMAGED: {c['error']}" if c["error"] else "")
        for c in details["checkpoints"]
    ]
    lines.append("  params:")
    lines += [f"    {key} = {value!r}" for key, value in _flat(details["params"]).items()]
    typer.echo("\n".join(lines))


def log(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The experiment.")],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List the runs of an experiment, oldest first: outcome, checkpoints kept, metrics."""
    workspace = Workspace.open()
    runs = workspace.runs(name)
    kept = workspace.run_checkpoints(name, runs)
    if as_json:
        echo_json([{**asdict(r), "checkpoints": kept[r.number]} for r in runs])
        return
    if not runs:
        typer.echo(f"experiment {name} has no runs yet: expman run {name}")
        return
    rows = [
        [
            str(r.number),
            r.commit[:12],
            r.status,
            format_number(r.step),
            r.duration or "-",
            r.parent_checkpoint or "-",
            ",".join(map(str, kept[r.number])) or "-",
            _metrics(r.metrics),
        ]
        for r in runs
    ]
    header = ["RUN", "COMMIT", "STATUS", "STEP", "TIME", "FROM", "CHECKPOINTS", "METRICS"]
    typer.echo(table(header, rows))


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {format_number(v)}" for k, v in metrics.items()) or "-"


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
