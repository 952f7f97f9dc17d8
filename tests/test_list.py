"""``expman list --sort/--filter/--columns/--sweep`` and ``expman compare --sweep``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expman._errors import UsageError
from expman.experiments._select import Row, parse_filter, select
from tests.conftest import run_expman

ROWS = [
    Row("a", {"accuracy": 0.5, "loss": 0.5}, {"lr": 0.1, "opt": "adam"}),
    Row("b", {"accuracy": 0.9, "loss": 0.1}, {"lr": 0.01, "opt": "sgd"}),
    Row("c", {}, {"lr": 0.03, "opt": "adam"}),
]


def names(rows: list[Row]) -> list[str]:
    return [row.name for row in rows]


def test_filters_compare_params_and_metrics_of_the_right_kind() -> None:
    assert names(select(ROWS, filters=[parse_filter("lr<0.05")])) == ["b", "c"]
    assert names(select(ROWS, filters=[parse_filter("accuracy >= 0.9")])) == ["b"]
    assert names(select(ROWS, filters=[parse_filter("opt=adam")])) == ["a", "c"]
    assert names(select(ROWS, filters=[parse_filter("opt<1")])) == []  # text vs number
    with pytest.raises(UsageError, match=r"invalid --filter 'lr': expected KEY OP VALUE"):
        parse_filter("lr")


def test_metrics_sort_best_first_params_ascending_missing_last() -> None:
    assert names(select(ROWS, sort="accuracy")) == ["b", "a", "c"]
    assert names(select(ROWS, sort="loss", lower_is_better=True)) == ["b", "a", "c"]
    assert names(select(ROWS, sort="lr")) == ["b", "c", "a"]
    assert names(select(ROWS, sort="lr", reverse=True)) == ["a", "c", "b"]


@pytest.fixture
def ran_sweep(workspace: Path) -> Path:
    assert run_expman(workspace, "new", "base").returncode == 0
    args = ["--set", "steps=2,8,4", "--no-queue"]
    assert run_expman(workspace, "sweep", "s", "--from", "base", *args).returncode == 0
    for number in (1, 2, 3):
        assert run_expman(workspace, "run", f"s-{number}").returncode == 0
    return workspace


def test_list_sorts_filters_and_shows_columns_of_a_sweep(ran_sweep: Path) -> None:
    result = run_expman(
        ran_sweep,
        "list",
        "--sweep",
        "s",
        "--sort",
        "accuracy",
        "--filter",
        "steps>2",
        "--columns",
        "steps,model.hidden_units,accuracy",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "NAME  STATUS     steps  model.hidden_units  accuracy",
        "s-2   succeeded  8      [10,10]             0.875",
        "s-3   succeeded  4      [10,10]             0.75",
    ]
    listed = json.loads(run_expman(ran_sweep, "list", "--sort", "steps", "--json").stdout)
    assert [e["name"] for e in listed] == ["s-1", "s-3", "s-2", "base"]
    unknown = run_expman(ran_sweep, "list", "--sweep", "t")
    assert unknown.stderr == (
        "expman: error: no sweep named 't' (sweeps: s): create one with expman sweep t "
        "--set KEY=V1,V2\n"
    )


def test_compare_a_whole_sweep_with_param_against_metric_views(
    ran_sweep: Path, tmp_path: Path
) -> None:
    report = tmp_path / "sweep.html"
    result = run_expman(ran_sweep, "compare", "--sweep", "s", "--json", "--html", str(report))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [v["label"] for v in data["variants"]] == ["s-1", "s-2", "s-3"]
    assert data["params"] == {"steps": [2, 8, 4]}
    page = report.read_text()
    assert "accuracy (final) against steps" in page
    scatter = page.split("accuracy (final) against steps")[1].split("</figure>")[0]
    assert [scatter.count(f'<circle data-variant="s-{i}"') for i in (1, 2, 3)] == [1, 1, 1]
    curves = page.split("accuracy over steps")[1].split("</figure>")[0]
    assert [curves.count(f'<polyline data-variant="s-{i}"') for i in (1, 2, 3)] == [1, 1, 1]
    terminal = run_expman(ran_sweep, "compare", "--sweep", "s")
    assert terminal.stdout.splitlines()[0].split() == ["s-1", "s-2", "s-3"]
