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


def list_(
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    sort: Annotated[
        str | None,
        typer.Option(
            metavar="KEY", help="Order by a metric (best first) or a parameter (ascending)."
        ),
    ] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the --sort order.")] = False,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="EXPR",
            help="Keep experiments where KEY OP VALUE holds (OP: < <= > >= = !=). Repeatable.",
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(metavar="KEY,...", help="Show these params and metrics as columns."),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only the members of this sweep.")
    ] = None,
) -> None:
    """List every experiment: base, runs, latest step, status and metrics.

    KEY is a metric (accuracy) or a parameter (lr, model.hidden_units);
    metrics.KEY or params.KEY when a name is both.
    """
    from expman.experiments._select import Row, flatten, parse_filter, select

    workspace = Workspace.open()
    summaries = workspace.experiments()
    filters = [parse_filter(text) for text in filter_ or []]
    keys = [k.strip() for k in (columns or "").split(",") if k.strip()]
    if sweep is not None:
        from expman.experiments._sweep import read_sweep

        members = {m.name for m in read_sweep(workspace, sweep).members}
        summaries = [s for s in summaries if s.name in members]
    rows: dict[str, Row] = {}
    if filters or sort or keys:
        params = workspace.params_of(summaries)
        rows = {s.name: Row(s.name, s.metrics, flatten(params[s.name])) for s in summaries}
        by_name = {s.name: s for s in summaries}
        chosen = select(
            list(rows.values()),
            filters=filters,
            sort=sort,
            lower_is_better=_lower_is_better(workspace, sort),
            reverse=reverse,
        )
        summaries = [by_name[row.name] for row in chosen]
    if as_json:
        from expman.experiments._select import lookup

        # A shallow copy per summary: asdict's deep copy took 0.2 s for 10,000 experiments.
        data = [{**vars(s), "metrics": dict(s.metrics)} for s in summaries]
        for item in data if keys else []:
            item["columns"] = {k: lookup(rows[item["name"]], k) for k in keys}
        echo_json(data)
        return
    if not summaries:
        if filters or sweep:
            typer.echo("no experiment matches")
        else:
            typer.echo("no experiments yet: create one with expman new NAME")
        return
    if keys:
        from expman.experiments._select import lookup

        header = ["NAME", "STATUS", *keys]
        table_rows = [
            [s.name, s.status, *(_cell(lookup(rows[s.name], k)) for k in keys)] for s in summaries
        ]
        typer.echo(table(header, table_rows))
        return
    header = ["NAME", "BASE", "RUNS", "STEP", "STATUS", workspace.config.key_metric or "METRICS"]
    table_rows = [
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
    typer.echo(table(header, table_rows))


def _lower_is_better(workspace: Workspace, key: str | None) -> bool:
    if key is None:
        return False
    metric = key.removeprefix("metrics.")
    if metric == workspace.config.key_metric:
        return workspace.config.key_metric_mode == "min"
    from expman.experiments._runner import lower_is_better

    return lower_is_better(metric)


def _cell(value: Any) -> str:
    if isinstance(value, list | dict | bool):
        import json

        return json.dumps(value, separators=(",", ":"))
    return format_number(value)


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
    from expman.experiments._select import flatten

    lines += [f"    {key} = {value!r}" for key, value in flatten(details["params"]).items()]
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
