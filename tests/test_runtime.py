"""The training-script API works on its own, without expman run or git."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import expman
from expman import ConfigError


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("EXPMAN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_params_come_from_expman_toml_in_the_current_directory(project: Path) -> None:
    (project / "expman.toml").write_text("[params]\nlr = 0.1\n[params.model]\nunits = [4]\n")
    assert expman.params() == {"lr": 0.1, "model": {"units": [4]}}


def test_params_without_expman_toml(project: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        expman.params()
    assert str(caught.value) == (
        f"no expman.toml in {project} and not started by expman run: run the script from "
        "the workspace root, or through expman run"
    )


def test_log_metrics_writes_beside_the_last_managers_checkpoints(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="expman"):
        manager = expman.CheckpointManager()  # a temporary directory, and it says so
    assert caplog.messages[0].startswith("Using temporary directory as checkpoint directory: ")
    expman.log_metrics(1, loss=0.5, accuracy=np.float32(0.25))
    expman.log_metrics(2, loss=0.25)
    lines = (manager.directory / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["step"], e["metrics"]) for e in events] == [
        (1, {"loss": 0.5, "accuracy": 0.25}),
        (2, {"loss": 0.25}),
    ]
    with pytest.raises(TypeError, match="metrics must be numbers"):
        expman.log_metrics(3, loss="high")  # type: ignore[arg-type]


def test_current_run_is_none_outside_expman_run(project: Path) -> None:
    assert expman.current_run() is None


def test_metrics_are_also_tensorboard_event_files(project: Path) -> None:
    if not os.environ.get("CI"):
        pytest.importorskip("tensorboardX")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script = (
        "import expman\n"
        "expman.CheckpointManager('model_dir')\n"
        "for step in (1, 2, 3):\n"
        "    expman.log_metrics(step, loss=1.0 / step, accuracy=step / 4)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=project, check=True)
    directory = project / "model_dir"
    assert len(list(directory.glob("events.out.tfevents.*"))) == 1
    reader = EventAccumulator(str(directory))
    reader.Reload()
    assert sorted(reader.Tags()["scalars"]) == ["accuracy", "loss"]
    assert [(e.step, round(e.value, 4)) for e in reader.Scalars("loss")] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.3333),
    ]
