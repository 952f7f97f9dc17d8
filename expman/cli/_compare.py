"""``expman compare``: variants side by side, in the terminal or as JSON."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from expman.cli._output import echo_json, format_number, note, table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command(
        "compare",
        epilog=(
            "Examples:  expman compare base wide  |  expman compare base@1 base@2 --all  |  "
            "expman compare base wide --code  |  expman compare base wide --json  |  "
            "expman compare base wide --html report.html  |  expman compare --sweep lr-grid"
        ),
    )(compare)


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _value(value: Any) -> str:
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format_number(value)
    return "-" if value is None else str(value)


def compare(
    experiments: Annotated[
        list[str] | None,
        typer.Argument(metavar="EXPERIMENT...", help="Two or more: NAME or NAME@RUN."),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(metavar="NAME", help="Compare every member of this sweep.")
    ] = None,
    all_params: Annotated[bool, typer.Option("--all", help="Show every parameter.")] = False,
    code: Annotated[bool, typer.Option("--code", help="Show the full code diff.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (docs/cli.md).")] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", metavar="FILE", help="Also write a self-contained HTML report."),
    ] = None,
) -> None:
    """Compare experiments: parameters, metrics, architecture, code, checkpoints, runs.

    Only parameters that differ are shown unless --all; the better value of
    each metric is marked with *. An experiment is its latest run, or NAME@RUN.
    """
    from expman.experiments._workspace import Workspace
    from expman.review._compare import code_diff, compare_experiments

    workspace = Workspace.open()
    if sweep is not None:
        from expman.experiments._sweep import read_sweep

        experiments = [
            *(experiments or []),
            *(m.name for m in read_sweep(workspace, sweep).members),
        ]
    result = compare_experiments(
        workspace, experiments or [], key_metric=workspace.config.key_metric
    )
    if html is not None:
        from expman.review._report import render_report, write_report

        report = render_report(
            result,
            workspace=workspace.root,
            checkpoint_dirs={v.label: workspace.checkpoint_dir(v.name) for v in result.variants},
            all_params=all_params,
        )
        write_report(html, report)
        note(f"wrote {html}")
    if as_json:
        echo_json(result.to_json(all_params=all_params))
        return
    labels = [v.label for v in result.variants]
    colour = _colour()
    out: list[str] = []

    def section(title: str) -> None:
        out.append("")
        out.append(typer.style(title, bold=True) if colour else title)

    out.append(
        table(
            ["", *labels],
            [
                ["status", *(v.status for v in result.variants)],
                [
                    "run",
                    *(
                        _value(v.run or (v.runs[-1]["number"] if v.runs else None))
                        for v in result.variants
                    ),
                ],
                ["step", *(_value(v.step) for v in result.variants)],
                ["commit", *(v.commit[:12] for v in result.variants)],
            ],
        )
    )
    keys = list(result.params) if all_params else list(result.params_differing)
    section("parameters" + ("" if all_params else " (differing; --all for all)"))
    if keys:
        out.append(table(["", *labels], [[k, *map(_value, result.params[k])] for k in keys]))
    else:
        out.append("  all identical")
    section("metrics (final; best in the run in brackets; * better)")
    if result.metrics:
        rows = []
        for metric, entry in result.metrics.items():
            cells = []
            for label, final, best in zip(labels, entry["final"], entry["best"], strict=True):
                text = f"{_value(final)} ({_value(best)})" if final is not None else "-"
                if label in entry["best_variants"]:
                    text += " *"
                    if colour:
                        text = typer.style(text, fg="green", bold=True)
                cells.append(text)
            rows.append([f"{metric} ({entry['better']} is better)", *cells])
        out.append(table(["", *labels], rows))
    else:
        out.append("  none recorded yet")
    arch = result.architecture
    section("architecture")
    if arch["unknown"]:
        out.append(f"  unknown for {', '.join(arch['unknown'])} (no run recorded yet)")
    if arch["differences"]:
        rows = [
            [
                d["name"],
                d["kind"],
                *(
                    "-" if s is None else f"[{', '.join(map(str, s))}] {t}"
                    for s, t in zip(d["shapes"], d["dtypes"], strict=True)
                ),
            ]
            for d in arch["differences"]
        ]
        out.append(table(["tensor", "change", *labels], rows))
    if arch["identical"]:
        out.append(f"  {arch['identical']} tensor(s) identical")
    section("code")
    for entry in result.code:
        stat = entry["stat"].rstrip() or "  no difference"
        out.append(f"{entry['from']} -> {entry['to']}:")
        out.append(stat)
        if code:
            first = result.variants[0]
            other = next(v for v in result.variants if v.label == entry["to"])
            out.append(code_diff(workspace, first, other).rstrip())
    section("checkpoints and runs")
    for variant in result.variants:
        steps = ", ".join(f"{c['step']} ({c['size']} B)" for c in variant.checkpoints) or "-"
        runs = ", ".join(f"{r['number']} {r['status']}" for r in variant.runs) or "-"
        out.append(f"  {variant.label}: checkpoints {steps}; runs {runs}")
    typer.echo("\n".join(out))
