"""The iris walkthrough end to end through the CLI, as docs/tutorial.md tells it."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import pytest

from demo.iris import walkthrough
from tests.conftest import git


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("walkthrough")
    walkthrough(root)  # raises as soon as a step does not behave as the tutorial says
    return root / "iris"


def test_checkpoints_at_the_first_and_last_step_of_each_run(played: Path) -> None:
    base = played / ".expman" / "checkpoints" / "base"
    assert sorted(p.name for p in base.glob("ckpt-*.h5")) == [
        "ckpt-000001.h5",
        "ckpt-000200.h5",
        "ckpt-000400.h5",
    ]
    index = (base / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-000400.h5"' in index


def test_the_refusal_is_recorded_and_touched_nothing(played: Path) -> None:
    log = git(played, "log", "--format=%s%n%(trailers:key=Exit-Code,valueonly)", "exp/wide")
    assert "run 1 of wide refused (exit 3): architecture differs from base@400\n3\n" in log
    wide = played / ".expman" / "checkpoints" / "wide"
    assert sorted(p.name for p in wide.glob("ckpt-*.h5")) == ["ckpt-000001.h5", "ckpt-000200.h5"]


def test_both_variants_stay_recoverable_in_git(played: Path) -> None:
    base = git(played, "log", "--format=%s", "exp/base").splitlines()
    # evaluate and predict record what they did themselves, not training's last loss
    assert base[0] == "run 4 of base: nothing logged or saved"
    assert base[1] == "run 3 of base: step 400, accuracy 1"
    assert base[-2:] == ["new experiment base", "iris template, from expman init --template iris"]
    assert "hidden_units = [10, 10]" in git(played, "show", "exp/base:expman.toml")
    assert "hidden_units = [20, 20]" in git(played, "show", "exp/wide:expman.toml")
    assert "save_every_secs = 1200" in git(played, "show", "exp/base:expman.toml")
    assert "keep_max = 10" in git(played, "show", "exp/base:expman.toml")
    # The user's checkout still has its uncommitted schedule change, and nothing else.
    assert git(played, "status", "--porcelain") == " M expman.toml\n"


def test_the_trained_model_is_well_above_chance(played: Path) -> None:
    metrics = json.loads(git(played, "show", "exp/base:expman-runs/base/002/metrics.json"))
    assert metrics["final"]["accuracy"] >= 0.9  # chance is 1/3 on three balanced classes
    assert metrics["best"]["loss"] < 0.2
    architecture = json.loads(
        git(played, "show", "exp/base:expman-runs/base/002/architecture.json")
    )
    names = [t["name"] for t in architecture["tensors"]]
    assert "dnn/hiddenlayer_1/bias/t_0/Adagrad" in names
    assert "global_step" in names
    assert architecture["config"] == {"hidden_units": [10, 10]}


def test_the_tutorial_shows_the_commands_the_demo_plays() -> None:
    root = Path(__file__).parents[1]
    tutorial = (root / "docs" / "tutorial.md").read_text()
    shown = [line[2:] for line in tutorial.splitlines() if line.startswith("$ ")]
    demo = (root / "demo" / "iris.py").read_text()
    played = re.findall(r'sh\.run\(\s*"((?:[^"\\]|\\.)*)"', demo)
    assert shown == played


def test_init_template_refuses_to_overwrite(tmp_path: Path) -> None:
    from tests.cli import expman

    repo = tmp_path / "existing"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("# mine\n")
    refused = expman(repo, "init", "--template", "iris")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"expman: error: expman init would overwrite train.py in {repo}: move them away or "
        "use another directory\n"
    )
    assert (repo / "train.py").read_text() == "# mine\n"
    assert sorted(p.name for p in repo.iterdir()) == [".git", "train.py"]
    unknown = expman(repo, "init", "--template", "mnist")
    assert unknown.returncode == 11
    assert unknown.stderr == (
        "expman: error: unknown template 'mnist': available templates: hf, iris, lightning, torch\n"
    )
    (repo / "train.py").unlink()
    added = expman(repo, "init", "--template", "iris")
    assert added.returncode == 0, added.stderr
    assert git(repo, "status", "--porcelain").split() == [
        "??",
        ".gitignore",
        "??",
        "README-iris.md",
        "??",
        "expman.toml",
        "??",
        "iris.csv",
        "??",
        "train.py",
    ]


@pytest.mark.parametrize(("argv", "kept"), [([], False), (["--keep"], True)])
def test_the_demo_removes_its_directory_unless_asked_to_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], kept: bool
) -> None:
    import demo.iris

    def quick_walkthrough(root: Path) -> None:
        (root / "iris").mkdir()  # what the walkthrough leaves behind

    monkeypatch.setattr(demo.iris, "walkthrough", quick_walkthrough)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["demo.iris", *argv])
    demo.iris.main()
    left = list(tmp_path.glob("expman-demo-*"))
    assert [bool(left), left[0].joinpath("iris").is_dir() if left else False] == [kept, kept]
