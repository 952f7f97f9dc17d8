"""Comparing experiments side by side: parameters, metrics, architecture, code, runs.

Everything comes from git: each variant's ``expman.toml`` and the records of
the run being compared (``expman-runs/NNN/*.json``), read with one git process
per variant. Nothing here reads a checkpoint file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expman._errors import ExperimentNotFoundError, UsageError
from expman.experiments._config import CONFIG_NAME, parse_config
from expman.experiments._records import RECORDS_DIR, record_directory
from expman.experiments._runner import lower_is_better
from expman.experiments._select import flatten
from expman.experiments._workspace import RunSummary, Workspace

__all__ = ["Comparison", "Variant", "compare_experiments", "parse_variant"]


@dataclass(frozen=True)
class Variant:
    """One side of a comparison: an experiment at its latest run, or at a given run."""

    name: str
    run: int | None
    commit: str
    code_commit: str
    status: str
    step: int | None
    params: Mapping[str, Any]
    final_metrics: Mapping[str, float]
    best_metrics: Mapping[str, float]
    architecture: Mapping[str, Any] | None
    checkpoints: Sequence[Mapping[str, Any]]
    runs: Sequence[Mapping[str, Any]]

    @property
    def label(self) -> str:
        return self.name if self.run is None else f"{self.name}@{self.run}"


@dataclass(frozen=True)
class Comparison:
    variants: tuple[Variant, ...]
    params: dict[str, list[Any]]
    params_differing: tuple[str, ...]
    metrics: dict[str, dict[str, Any]]
    architecture: dict[str, Any]
    code: list[dict[str, str]]

    def to_json(self, *, all_params: bool = False) -> dict[str, Any]:
        keys = self.params if all_params else self.params_differing
        return {
            "variants": [
                {
                    "label": v.label,
                    "name": v.name,
                    "run": v.run,
                    "commit": v.commit,
                    "code_commit": v.code_commit,
                    "status": v.status,
                    "step": v.step,
                    "checkpoints": list(v.checkpoints),
                    "runs": list(v.runs),
                }
                for v in self.variants
            ],
            "params": {key: self.params[key] for key in keys},
            "metrics": self.metrics,
            "architecture": self.architecture,
            "code": self.code,
        }


def parse_variant(spec: str) -> tuple[str, int | None]:
    """``wide`` or ``wide@2`` -> (name, run or None)."""
    name, sep, run = spec.partition("@")
    if sep and not run.isdigit():
        raise UsageError(f"invalid variant {spec!r}: write NAME or NAME@RUN, e.g. wide@2")
    return name, int(run) if sep else None


def compare_experiments(
    ws: Workspace, specs: Sequence[str], *, key_metric: str | None = None
) -> Comparison:
    """Compare two or more experiments (``NAME`` or ``NAME@RUN``)."""
    if len(specs) < 2:
        raise UsageError(
            "compare needs two or more experiments or runs: expman compare base wide, "
            "or the runs of one experiment: expman compare base@1 base@2"
        )
    variants = tuple(_variant(ws, spec) for spec in specs)
    params = _params_table([v.params for v in variants])
    differing = tuple(k for k, values in params.items() if len({_key(v) for v in values}) > 1)
    return Comparison(
        variants=variants,
        params=params,
        params_differing=differing,
        metrics=_metrics_table(variants, key_metric, ws.config.key_metric_mode),
        architecture=_architecture_table(variants),
        code=[
            {
                "from": variants[0].label,
                "to": other.label,
                "stat": ws.repo.git(
                    "diff",
                    "--stat",
                    variants[0].code_commit,
                    other.code_commit,
                    "--",
                    ".",
                    f":(exclude){RECORDS_DIR}",
                ),
            }
            for other in variants[1:]
        ],
    )


def code_diff(ws: Workspace, a: Variant, b: Variant) -> str:
    return ws.repo.git("diff", a.code_commit, b.code_commit, "--", ".", f":(exclude){RECORDS_DIR}")


def _variant(ws: Workspace, spec: str) -> Variant:
    name, number = parse_variant(spec)
    head = ws.head_of(name)
    runs = ws.runs(name)
    run: RunSummary | None
    if number is None:
        run = runs[-1] if runs else None
    else:
        run = next((r for r in runs if r.number == number), None)
        if run is None:
            known = ", ".join(str(r.number) for r in runs) or "none yet"
            raise ExperimentNotFoundError(
                f"experiment {name} has no run {number} (runs: {known}): see expman log {name}"
            )
    commit = run.commit if run else head
    directory = record_directory(name, run.number) if run else None
    names = [CONFIG_NAME]
    if directory:
        names += [
            f"{directory}/{f}"
            for f in (
                "run.json",
                "metrics.json",
                "architecture.json",
                "checkpoints.json",
                "params.json",
            )
        ]
    files = ws.repo.read_files(commit, names)
    record = _json(files.get(f"{directory}/run.json")) or {}
    metrics = _json(files.get(f"{directory}/metrics.json")) or {}
    params_record = _json(files.get(f"{directory}/params.json"))
    if params_record is not None:
        params = params_record
    else:
        text = (files.get(CONFIG_NAME) or b"").decode()
        params = dict(parse_config(text, f"{CONFIG_NAME} of {name}").params)
    return Variant(
        name=name,
        run=number,
        commit=commit,
        code_commit=record.get("code_commit", head),
        status=run.status if run else "never run",
        step=run.step if run else None,
        params=params,
        final_metrics=metrics.get("final", {}),
        best_metrics=metrics.get("best", {}),
        architecture=_json(files.get(f"{directory}/architecture.json")),
        checkpoints=_json(files.get(f"{directory}/checkpoints.json")) or [],
        runs=[
            {"number": r.number, "status": r.status, "step": r.step, "metrics": r.metrics}
            for r in runs
            if number is None or r.number <= number
        ],
    )


def _json(content: bytes | None) -> Any:
    return json.loads(content) if content else None


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


_MISSING = "(absent)"


def _params_table(all_params: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    flats = [flatten(p) for p in all_params]
    keys = sorted(set().union(*flats))
    return {key: [flat.get(key, _MISSING) for flat in flats] for key in keys}


def _metrics_table(
    variants: Sequence[Variant], key_metric: str | None, key_mode: str
) -> dict[str, dict[str, Any]]:
    names = sorted(set().union(*(v.final_metrics for v in variants)))
    table = {}
    for metric in names:
        lower = key_mode == "min" if metric == key_metric else lower_is_better(metric)
        final = [v.final_metrics.get(metric) for v in variants]
        best = [v.best_metrics.get(metric) for v in variants]
        present = [value for value in final if value is not None]
        target = (min if lower else max)(present) if len(present) > 1 else None
        table[metric] = {
            "better": "lower" if lower else "higher",
            "final": final,
            "best": best,
            "best_variants": [
                v.label for value, v in zip(final, variants, strict=True) if value == target
            ],
        }
    return table


def _architecture_table(variants: Sequence[Variant]) -> dict[str, Any]:
    known = [v for v in variants if v.architecture is not None]
    specs = [
        {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in v.architecture["tensors"]}
        if v.architecture
        else None
        for v in variants
    ]
    if len(known) < 2:
        return {
            "identical": 0,
            "differences": [],
            "unknown": [v.label for v in variants if v.architecture is None],
        }
    names = sorted(set().union(*(s for s in specs if s is not None)))
    identical = 0
    differences = []
    for name in names:
        entries = [s.get(name) if s is not None else None for s in specs]
        seen = [e for e, s in zip(entries, specs, strict=True) if s is not None]
        if len(set(seen)) == 1 and None not in seen:
            identical += 1
            continue
        present = [e for e in seen if e is not None]
        if len(present) < len(seen):
            kind = "added" if entries[0] is None else "removed"
        elif len({e[0] for e in present}) > 1:
            kind = "reshaped"
        else:
            kind = "retyped"
        differences.append(
            {
                "name": name,
                "kind": kind,
                "shapes": [list(e[0]) if e else None for e in entries],
                "dtypes": [e[1] if e else None for e in entries],
            }
        )
    return {
        "identical": identical,
        "differences": differences,
        "unknown": [v.label for v in variants if v.architecture is None],
    }
