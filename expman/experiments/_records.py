"""Run records: the small text files and the commit that tell a run's story in git.

A run of experiment ``wide`` is committed on ``exp/wide`` as the directory
``expman-runs/wide/003/`` (``run.json``, ``params.json``, ``metrics.json``,
``architecture.json``, ``checkpoints.json``), with a message that reads well in
``git log --oneline`` and ``Key: value`` trailers that ``git log
--format='%(trailers)'`` and ``expman list`` read back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from expman._digest import digest_fields
from expman._json import dumps
from expman._text import one_line

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
RunStatus = Literal["succeeded", "failed", "interrupted", "terminated", "refused", "lost"]


@dataclass(frozen=True)
class CheckpointEntry:
    step: int
    file: str
    size: int
    digest: str  # "blake3:HEX" (expman._digest)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"step", "file", "size", "blake3", "metrics"}``, as ``checkpoints.json`` lists it."""
        fields = {"step": self.step, "file": self.file, "size": self.size}
        return {**fields, **digest_fields(self.digest), "metrics": dict(self.metrics)}


@dataclass(frozen=True)
class RunRecord:
    """Everything committed about one run."""

    experiment: str
    number: int
    run_id: str
    status: RunStatus
    exit_code: int | None  # None for a lost run
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
    checkpoint_step: int | None = None  # this run's newest checkpoint
    signal: str | None = None  # the signal that stopped the run (SIGINT, SIGTERM, SIGHUP)
    killed: bool = False  # killed with SIGKILL after the grace period
    log: str | None = None  # where a lost run's output is

    @property
    def directory(self) -> str:
        return record_directory(self.experiment, self.number)


def record_directory(experiment: str, number: int) -> str:
    """Records are per experiment: a branch made from another keeps that one's as history."""
    return f"{RECORDS_DIR}/{experiment}/{number:03d}"


def _json(value: Any) -> bytes:
    return (dumps(value, indent=2, sort_keys=True) + "\n").encode()


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
        "checkpoint_step": record.checkpoint_step,
    }
    if record.refusal:
        run["refusal"] = record.refusal
    if record.signal:
        run["signal"] = record.signal
        run["killed_after_grace"] = record.killed
    if record.log:
        run["log"] = record.log
    files = {
        "run.json": _json(run),
        "params.json": _json(dict(record.params)),
        "metrics.json": _json(
            {"final": dict(record.final_metrics), "best": dict(record.best_metrics)}
        ),
        "checkpoints.json": _json([c.to_json() for c in record.checkpoints]),
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
    subject = f"run {record.number} of {record.experiment}{_outcome(record)}"
    details = _details(record)
    if details:
        subject += ": " + ", ".join(details)
    body = [
        f"expman run {record.experiment}: {' '.join(record.command)}",
        f"{len(record.checkpoints)} checkpoint(s) kept; records in {record.directory}/.",
    ]
    if record.killed:
        body.append(f"The command ignored {record.signal} and was killed with SIGKILL.")
    if record.status == "lost":
        body.append(
            "expman stopped before it could record this run (killed, or the machine "
            f"restarted); recorded by the next run. Output: {record.log}."
        )
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
        "Exit-Code": "" if record.exit_code is None else str(record.exit_code),
        "Signal": record.signal or "",
        "Step": "" if record.last_step is None else str(record.last_step),
        "Checkpoint-Step": "" if record.checkpoint_step is None else str(record.checkpoint_step),
        "Metrics": ", ".join(f"{k}={v!r}" for k, v in record.final_metrics.items()),
        "Duration": f"{record.duration_s:.1f}s",
        "Code-Commit": record.code_commit,
        "Parent-Checkpoint": record.parent_checkpoint or "",
    }
    return _message(subject, body, trailers)


def _outcome(record: RunRecord) -> str:
    """`` failed (exit 1)``: how the run ended, with the exit code once."""
    if record.status == "succeeded":
        return ""
    if record.status == "lost":
        return " lost"
    how = [record.signal] if record.signal else []
    how.append(f"exit {record.exit_code}")
    return f" {record.status} ({', '.join(how)})"


def _details(record: RunRecord) -> list[str]:
    """This run's own progress: its last step, its last checkpoint, its metrics."""
    if record.status == "refused":
        return [f"architecture differs from {record.parent_checkpoint or 'the checkpoint'}"]
    details = []
    if record.last_step is None:
        details.append("nothing logged or saved")
    else:
        details.append(f"step {record.last_step}")
        if record.checkpoint_step is None:
            if record.status != "succeeded":  # an evaluate run saves nothing, and is fine
                details.append("no checkpoint saved")
        elif record.checkpoint_step != record.last_step:
            details.append(f"last checkpoint {record.checkpoint_step}")
    if record.final_metrics:
        details.append(format_metrics(record.final_metrics))
    return details


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
    # The subject and trailers are one line each whatever names they quote: a
    # metric or parameter name can never add a line (a forged trailer).
    lines = [one_line(subject), "", *body, ""]
    lines += [f"{key}: {one_line(value)}" for key, value in trailers.items() if value != ""]
    return "\n".join(lines) + "\n"
