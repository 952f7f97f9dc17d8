"""Run records: the small text files and the commit that tell a run's story in git.

A run of experiment ``wide`` is committed on ``exp/wide`` as the directory
``expman-runs/wide/003/`` (``run.json``, ``params.json``, ``metrics.json``,
``architecture.json``, ``checkpoints.json``), with a message that reads well in
``git log --oneline`` and ``Key: value`` trailers that ``git log
--format='%(trailers)'`` and ``expman list`` read back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "RECORDS_DIR",
    "RunRecord",
    "format_metrics",
    "new_experiment_message",
    "parse_metrics",
    "record_directory",
    "record_files",
    "run_message",
    "set_params_message",
    "sweep_member_message",
]

RECORDS_DIR = "expman-runs"
RunStatus = Literal["succeeded", "failed", "interrupted", "refused"]


@dataclass(frozen=True)
class CheckpointEntry:
    step: int
    file: str
    size: int
    sha256: str
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    """Everything committed about one run."""

    experiment: str
    number: int
    run_id: str
    status: RunStatus
    exit_code: int
    command: Sequence[str]
    host: str
    started: str
    duration_s: float
    code_commit: str
    base: str | None
    parent_checkpoint: str | None
    fresh: bool
    params: Mapping[str, Any]
    last_step: int | None
    final_metrics: Mapping[str, float]
    best_metrics: Mapping[str, float]
    architecture: Mapping[str, Any] | None
    checkpoints: Sequence[CheckpointEntry]
    refusal: str | None = None

    @property
    def directory(self) -> str:
        return record_directory(self.experiment, self.number)


def record_directory(experiment: str, number: int) -> str:
    """Records are per experiment: a branch made from another keeps that one's as history."""
    return f"{RECORDS_DIR}/{experiment}/{number:03d}"


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, allow_nan=True) + "\n").encode()


def record_files(record: RunRecord) -> dict[str, bytes]:
    run = {
        "experiment": record.experiment,
        "run": record.number,
        "run_id": record.run_id,
        "status": record.status,
        "exit_code": record.exit_code,
        "command": list(record.command),
        "host": record.host,
        "started": record.started,
        "duration_s": round(record.duration_s, 3),
        "code_commit": record.code_commit,
        "parent_checkpoint": record.parent_checkpoint,
        "fresh": record.fresh,
        "last_step": record.last_step,
    }
    if record.refusal:
        run["refusal"] = record.refusal
    files = {
        "run.json": _json(run),
        "params.json": _json(dict(record.params)),
        "metrics.json": _json(
            {"final": dict(record.final_metrics), "best": dict(record.best_metrics)}
        ),
        "checkpoints.json": _json([asdict(c) for c in record.checkpoints]),
    }
    if record.architecture is not None:
        files["architecture.json"] = _json(dict(record.architecture))
    return {f"{record.directory}/{name}": content for name, content in files.items()}


def format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {_number(value)}" for name, value in metrics.items())


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parse_metrics(text: str) -> dict[str, float]:
    """The ``Metrics:`` trailer back into numbers: ``loss=0.081, accuracy=0.97``."""
    metrics = {}
    for part in text.split(", "):
        name, sep, value = part.partition("=")
        if sep:
            try:
                metrics[name] = float(value)
            except ValueError:
                continue
    return metrics


def run_message(record: RunRecord) -> str:
    what = {
        "succeeded": "",
        "failed": f" failed (exit {record.exit_code})",
        "interrupted": " interrupted",
        "refused": " refused",
    }[record.status]
    details = []
    if record.status == "refused":
        details.append(f"architecture differs from {record.parent_checkpoint or 'the checkpoint'}")
    elif record.last_step is not None:
        details.append(f"step {record.last_step}")
    if record.final_metrics and record.status != "refused":
        details.append(format_metrics(record.final_metrics))
    subject = f"run {record.number} of {record.experiment}{what}"
    if details:
        subject += ": " + ", ".join(details)
    body = [
        f"expman run {record.experiment}: {' '.join(record.command)}",
        f"{len(record.checkpoints)} checkpoint(s) kept; records in {record.directory}/.",
    ]
    if record.refusal:
        body.append("")
        body.append(record.refusal)
    trailers = {
        "Experiment": record.experiment,
        "Base": record.base or "",
        "Run": str(record.number),
        "Runs": str(record.number),
        "Run-Id": record.run_id,
        "Status": record.status,
        "Exit-Code": str(record.exit_code),
        "Step": "" if record.last_step is None else str(record.last_step),
        "Metrics": ", ".join(f"{k}={v!r}" for k, v in record.final_metrics.items()),
        "Duration": f"{record.duration_s:.1f}s",
        "Code-Commit": record.code_commit,
        "Parent-Checkpoint": record.parent_checkpoint or "",
    }
    return _message(subject, body, trailers)


def new_experiment_message(
    name: str, base: str | None, source: str, changes: Sequence[str], note: str | None
) -> str:
    subject = f"new experiment {name}"
    if base:
        subject += f" from {base}"
    if changes:
        subject += ": " + ", ".join(changes)
    body = [note] if note else []
    body.append(f"Snapshot of {source}, made by expman new.")
    return _message(
        subject, body, {"Experiment": name, "Base": base or "", "Runs": "0", "Source": source}
    )


def sweep_member_message(
    name: str,
    base: str | None,
    source: str,
    changes: Sequence[str],
    *,
    sweep: str,
    position: str,
    seed: int | None,
) -> str:
    """A new experiment made by ``expman sweep``: ``Sweep:`` trailers name the sweep."""
    subject = f"new experiment {name} of sweep {sweep}: {', '.join(changes)}"
    body = [f"Member {position} of sweep {sweep}; snapshot of {source}, made by expman sweep."]
    trailers = {
        "Experiment": name,
        "Base": base or "",
        "Runs": "0",
        "Source": source,
        "Sweep": sweep,
        "Sweep-Member": position,
        "Sweep-Seed": "" if seed is None else str(seed),
    }
    return _message(subject, body, trailers)


def set_params_message(name: str, base: str | None, runs: int, changes: Sequence[str]) -> str:
    subject = f"set {', '.join(changes)} for {name}"
    trailers = {"Experiment": name, "Base": base or "", "Runs": str(runs)}
    return _message(subject, ["Changed by expman run --set."], trailers)


def _message(subject: str, body: Sequence[str], trailers: Mapping[str, str]) -> str:
    lines = [subject, "", *body, ""]
    lines += [f"{key}: {value}" for key, value in trailers.items() if value != ""]
    return "\n".join(lines) + "\n"
