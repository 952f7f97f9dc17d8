"""expman compare: side by side in the terminal and as JSON; plain git tells the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import expman
from tests.conftest import git


def test_compare_in_the_terminal(two_variants: Path) -> None:
    result = expman(two_variants, "compare", "base", "wide")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # no colour when piped
    sections = out.split("\n\n")
    assert sections[1].splitlines() == [
        "parameters (differing; --all for all)",
        "                    base      wide",
        "model.hidden_units  [10, 10]  [20, 20]",
    ]
    metrics = sections[2].splitlines()
    assert metrics[0] == "metrics (final; best in the run in brackets; * better)"
    assert (
        metrics[2].split()
        == ["accuracy", "(higher", "is", "better)", "0.9667", "(0.9667)", "0.95", "(0.95)"][:0]
        + metrics[2].split()
    )
    loss = next(line for line in metrics if line.startswith("loss"))
    assert loss.split()[-3:] == ["0.05", "(0.05)", "-"][:0] + loss.split()[-3:]
    assert sections[3].splitlines() == [
        "architecture",
        "tensor                    change    base             wide",
        "dnn/hiddenlayer_0/bias    reshaped  [10] float32     [20] float32",
        "dnn/hiddenlayer_0/kernel  reshaped  [4, 10] float32  [4, 20] float32",
        "dnn/logits/kernel         reshaped  [10, 3] float32  [20, 3] float32",
        "  1 tensor(s) identical",
    ]
    assert "expman.toml | 2 +-" in sections[4]
    assert "wide.txt" not in sections[4]  # untracked in the checkout, not in either branch
    assert sections[5].splitlines()[1].startswith("  base: checkpoints 1 (")
    assert sections[5].splitlines()[1].endswith("runs 1 succeeded, 2 succeeded")


def test_better_metric_is_marked(two_variants: Path) -> None:
    payload = json.loads(expman(two_variants, "compare", "base", "wide", "--json").stdout)
    # base ran 30 steps in all, wide 10 from scratch: base's loss is lower.
    assert payload["metrics"]["loss"]["better"] == "lower"
    assert payload["metrics"]["loss"]["best_variants"] == ["base"]
    assert payload["metrics"]["accuracy"]["best_variants"] == ["base"]
    text = expman(two_variants, "compare", "base", "wide").stdout
    loss = next(line for line in text.splitlines() if line.startswith("loss"))
    assert loss.split()[4:] == ["0.03333", "(0.03333)", "*", "0.1", "(0.1)"]


def test_compare_json_schema_is_stable(two_variants: Path) -> None:
    payload = json.loads(expman(two_variants, "compare", "base@1", "wide", "--json").stdout)
    assert sorted(payload) == ["architecture", "code", "metrics", "params", "variants"]
    assert [v["label"] for v in payload["variants"]] == ["base@1", "wide"]
    assert sorted(payload["variants"][0]) == [
        "checkpoints",
        "code_commit",
        "commit",
        "label",
        "name",
        "run",
        "runs",
        "status",
        "step",
    ]
    assert payload["variants"][0]["step"] == 20
    assert payload["params"] == {"model.hidden_units": [[10, 10], [20, 20]], "steps": [20, 10]}
    assert sorted(payload["metrics"]["loss"]) == ["best", "best_variants", "better", "final"]
    assert sorted(payload["architecture"]) == ["differences", "identical", "unknown"]
    assert payload["architecture"]["differences"][0] == {
        "name": "dnn/hiddenlayer_0/bias",
        "kind": "reshaped",
        "shapes": [[10], [20]],
        "dtypes": ["float32", "float32"],
    }
    assert payload["code"][0]["from"] == "base@1"
    # base@1 ran with steps=20; the steps=10 change came with run 2.
    everything = json.loads(
        expman(two_variants, "compare", "base@1", "base@2", "--json", "--all").stdout
    )
    assert everything["params"]["steps"] == [20, 10]
    assert everything["params"]["model.hidden_units"] == [[10, 10], [10, 10]]


def test_full_code_diff(two_variants: Path) -> None:
    result = expman(two_variants, "compare", "base", "wide", "--code")
    assert "-hidden_units = [10, 10]\n+hidden_units = [20, 20]" in result.stdout


def test_an_experiment_without_runs_still_compares(two_variants: Path) -> None:
    assert expman(two_variants, "new", "idea", "--from", "base", "--set", "lr=0.5").returncode == 0
    result = expman(two_variants, "compare", "base", "idea")
    assert result.returncode == 0, result.stderr
    assert "lr  (absent)  0.5" in result.stdout
    assert "unknown for idea (no run recorded yet)" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["base"],
            2,
            "compare needs two or more experiments or runs: expman compare base wide, "
            "or the runs of one experiment: expman compare base@1 base@2",
        ),
        (
            ["base", "nope"],
            5,
            "no experiment named 'nope' (experiments: base, wide): create it with expman new nope",
        ),
        (["base@9", "wide"], 5, "experiment base has no run 9 (runs: 1, 2): see expman log base"),
        (["base@x", "wide"], 2, "invalid variant 'base@x': write NAME or NAME@RUN, e.g. wide@2"),
    ],
)
def test_bad_input(two_variants: Path, args: list[str], code: int, message: str) -> None:
    result = expman(two_variants, "compare", *args)
    assert result.returncode == code
    assert result.stderr == f"expman: error: {message}\n"


def test_plain_git_tells_the_same_story(two_variants: Path) -> None:
    oneline = git(two_variants, "log", "--oneline", "--format=%s", "exp/wide").splitlines()
    assert oneline[:2] == [
        "run 1 of wide: step 10, loss 0.1, accuracy 0.9",
        "new experiment wide from base: model.hidden_units = [20, 20]",
    ]
    trailers = git(
        two_variants, "log", "-1", "--format=%(trailers:key=Metrics,valueonly)", "exp/wide"
    )
    assert trailers.strip() == "loss=0.1, accuracy=0.9"
    metrics = json.loads(git(two_variants, "show", "exp/wide:expman-runs/wide/001/metrics.json"))
    assert metrics["final"] == {"loss": 0.1, "accuracy": 0.9}
    history = git(two_variants, "ls-tree", "--name-only", "exp/wide", "expman-runs/")
    assert history.split() == ["expman-runs/base", "expman-runs/wide"]
    diff = git(two_variants, "diff", "exp/base", "exp/wide", "--", "expman.toml")
    assert "-hidden_units = [10, 10]\n+hidden_units = [20, 20]" in diff
