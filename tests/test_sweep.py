"""Sweeps: value syntax, distributions, and the branches a sweep creates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expman._errors import InvalidAssignmentError
from expman.experiments._sweep import Distribution, expand, parse_axis, split_values
from tests.cli import checkout_state
from tests.conftest import git, run_expman


def test_values_split_at_top_level_commas_only() -> None:
    assert split_values("0.1, 0.03,0.01") == ["0.1", "0.03", "0.01"]
    assert split_values("[10,10],[20,20]") == ["[10,10]", "[20,20]"]
    assert split_values('"a,b",{x = 1, y = 2}') == ['"a,b"', "{x = 1, y = 2}"]


def test_an_axis_is_toml_values_or_a_distribution() -> None:
    assert parse_axis("model.hidden_units=[10,10],[20,20]").values == ([10, 10], [20, 20])
    assert parse_axis("optimizer=adam,sgd").values == ("adam", "sgd")
    axis = parse_axis("lr=loguniform(1e-4, 1e-1)")
    assert axis.key == ("lr",)
    assert axis.distribution == Distribution("loguniform", (1e-4, 1e-1))
    assert parse_axis("batch=choice(32,64)").distribution == Distribution("choice", (32, 64))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr=loguniform(0,1)", "loguniform takes two positive numbers LOW < HIGH"),
        ("lr=uniform(1,0)", "uniform takes two numbers LOW < HIGH"),
        ("n=randint(1.5,3)", "randint takes two integers LOW <= HIGH"),
        ("lr", "expected KEY=VALUE"),
    ],
)
def test_bad_axes_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(InvalidAssignmentError, match=message):
        parse_axis(text)


def test_the_grid_is_every_combination_first_set_slowest() -> None:
    combos = expand([parse_axis("a=1,2"), parse_axis("b=x,y,z")], samples=None, seed=0)
    assert [[c.value for c in combo] for combo in combos] == [
        [1, "x"],
        [1, "y"],
        [1, "z"],
        [2, "x"],
        [2, "y"],
        [2, "z"],
    ]


def test_random_draws_depend_on_the_seed_and_stay_in_range() -> None:
    axes = [parse_axis("lr=loguniform(1e-4,1e-1)"), parse_axis("n=randint(1,3)")]
    first = expand(axes, samples=50, seed=7)
    assert first == expand(axes, samples=50, seed=7)
    assert first != expand(axes, samples=50, seed=8)
    assert all(1e-4 <= combo[0].value <= 1e-1 for combo in first)
    assert {combo[1].value for combo in first} == {1, 2, 3}


def test_a_distribution_without_samples_is_refused() -> None:
    with pytest.raises(InvalidAssignmentError, match=r"--set lr is a distribution: give --samples"):
        expand([parse_axis("lr=uniform(0,1)")], samples=None, seed=0)


def test_a_grid_sweep_creates_one_branch_per_combination(workspace: Path) -> None:
    assert run_expman(workspace, "new", "base").returncode == 0
    before = checkout_state(workspace)
    result = run_expman(
        workspace,
        "sweep",
        "lr-grid",
        "--from",
        "base",
        "--set",
        "lr=0.1,0.03,0.01",
        "--set",
        "model.hidden_units=[10,10],[20,20]",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "  lr-grid-1  lr=0.1, model.hidden_units=[10,10]",
        "  lr-grid-2  lr=0.1, model.hidden_units=[20,20]",
        "  lr-grid-3  lr=0.03, model.hidden_units=[10,10]",
        "  lr-grid-4  lr=0.03, model.hidden_units=[20,20]",
        "  lr-grid-5  lr=0.01, model.hidden_units=[10,10]",
        "  lr-grid-6  lr=0.01, model.hidden_units=[20,20]",
    ]
    assert checkout_state(workspace) == before
    config = git(workspace, "show", "exp/lr-grid-4:expman.toml")
    assert "lr = 0.03" in config
    assert "hidden_units = [20, 20]" in config
    assert "# expman configuration for the tests" in config  # the user's layout is kept
    trailers = git(workspace, "log", "-1", "--format=%(trailers)", "exp/lr-grid-4")
    assert "Sweep: lr-grid\nSweep-Member: 4/6\n" in trailers
    assert git(workspace, "rev-parse", "exp/lr-grid-4^") == git(workspace, "rev-parse", "exp/base")
    record = json.loads(git(workspace, "show", "refs/expman/sweeps/lr-grid:sweep.json"))
    assert [m["name"] for m in record["members"]] == [f"lr-grid-{i}" for i in range(1, 7)]
    assert record["members"][3]["params"] == {"lr": 0.03, "model.hidden_units": [20, 20]}
    queue = run_expman(workspace, "queue")
    assert [line.split()[:2] for line in queue.stdout.splitlines()[1:]] == [
        [f"lr-grid-{i}", "queued"] for i in range(1, 7)
    ]


def test_a_random_sweep_records_its_seed_and_is_reproducible(workspace: Path) -> None:
    args = ["--set", "lr=loguniform(1e-4,1e-1)", "--samples", "3", "--seed", "0", "--no-queue"]
    assert run_expman(workspace, "sweep", "a", *args).returncode == 0
    assert run_expman(workspace, "sweep", "b", *args).returncode == 0
    for number in (1, 2, 3):
        lr_a = git(workspace, "show", f"exp/a-{number}:expman.toml").split("lr = ")[1].split()[0]
        lr_b = git(workspace, "show", f"exp/b-{number}:expman.toml").split("lr = ")[1].split()[0]
        assert lr_a == lr_b
        assert 1e-4 <= float(lr_a) <= 1e-1
    assert "Sweep-Seed: 0" in git(workspace, "log", "-1", "--format=%(trailers)", "exp/a-2")
    assert run_expman(workspace, "queue").stdout.startswith("the queue is empty")


def test_a_sweep_is_all_or_nothing(workspace: Path) -> None:
    assert run_expman(workspace, "new", "s-2").returncode == 0
    result = run_expman(workspace, "sweep", "s", "--set", "lr=1,2,3")
    assert result.returncode == 6
    assert result.stderr == (
        "expman: error: experiment s-2 already exists: choose another sweep name than s\n"
    )
    assert git(workspace, "for-each-ref", "--format=%(refname)", "refs/heads/exp/") == (
        "refs/heads/exp/s-2\n"
    )
